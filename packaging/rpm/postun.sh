# %postun of lancached ($1: 0 = erase, 1 = upgrade). On upgrade: restart the service so the new
# binary runs (its sockets keep listening meanwhile). The cache (/var/cache/lancached), the CA
# (/var/lib/lancached) and the user stay after an erase: rpm has no purge, so deleting what may
# be terabytes of downloads is left to the administrator (docs/packaging.md).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart lancached.service >/dev/null 2>&1 || :
    fi
fi
exit 0
