# %post of lancached ($1: 1 = first install, 2 = upgrade). Written by hand, without rpm macros,
# so the same text works under every rpm version and is checked as it is (tests/packaging.rs).
UNITS="lancached-dns.socket lancached-http.socket lancached-https.socket lancached-control.socket lancached.service"
# User and group first: lancached-control.socket names SocketGroup=lancache.
systemd-sysusers /usr/lib/sysusers.d/lancached.conf || :
systemd-tmpfiles --create /usr/lib/tmpfiles.d/lancached.conf || :
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    # First install: enable the sockets and the service (works offline, in a chroot too), then
    # start them where systemd runs. A socket that cannot bind (port 53 held by
    # systemd-resolved's stub) must not fail the transaction.
    systemctl --no-reload enable $UNITS >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ]; then
        systemctl start $UNITS >/dev/null 2>&1 || :
    fi
fi
exit 0
