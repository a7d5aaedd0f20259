# %preun of lancached ($1: 0 = erase, 1 = upgrade). On erase: stop and disable the service and
# its sockets. On upgrade nothing happens here; %postun restarts the service.
UNITS="lancached-dns.socket lancached-http.socket lancached-https.socket lancached-control.socket lancached.service"
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now $UNITS >/dev/null 2>&1 || :
fi
exit 0
