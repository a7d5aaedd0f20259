//! Lifecycle under the systemd service protocol (sd_notify(3), sd_listen_fds(3)):
//! - READY=1 only once every listener is live (a request right after READY is answered);
//! - STATUS= carries a one-line summary;
//! - WATCHDOG=1 at half of WATCHDOG_USEC while every subsystem is healthy;
//! - RELOADING=1 + MONOTONIC_USEC=, then READY=1, around a reload (SIGHUP and lancachectl);
//! - SIGTERM: STOPPING=1, in-flight requests drain, exit status 0;
//! - start-up with no listeners at all fails with a clear message.

use crate::util::Daemon;
use std::time::Duration;

#[test]
fn ready_means_serving() {
    let d = Daemon::start();
    let notes = d.notifications().join("\n");
    assert!(notes.contains("STATUS=serving"), "{notes}");
    let body = ureq::get(&d.http_url("/health"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(body.contains("\"status\":\"ok\""), "{body}");
}

#[test]
fn watchdog_pings_at_half_interval() {
    let d = Daemon::builder().watchdog_usec(400_000).start();
    assert!(
        d.wait_notify("WATCHDOG=1", 3, Duration::from_secs(5)),
        "{:?}",
        d.notifications()
    );
}

#[test]
fn sighup_reload_is_bracketed() {
    let d = Daemon::start();
    d.signal(libc::SIGHUP);
    assert!(
        d.wait_notify("RELOADING=1", 1, Duration::from_secs(5)),
        "{:?}",
        d.notifications()
    );
    assert!(
        d.wait_notify("READY=1", 2, Duration::from_secs(5)),
        "{:?}",
        d.notifications()
    );
    let reloading = d
        .notifications()
        .into_iter()
        .find(|m| m.contains("RELOADING=1"))
        .unwrap();
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
}

#[test]
fn sigterm_stops_cleanly() {
    let mut d = Daemon::start();
    let status = d
        .stop(Duration::from_secs(10))
        .expect("exits within the drain deadline");
    assert!(status.success(), "{status:?}\n{}", d.stderr());
    assert!(d.notifications().iter().any(|m| m.contains("STOPPING=1")));
}

#[test]
fn sigterm_drains_in_flight_requests() {
    use std::io::{Read, Write};
    let mut d = Daemon::start();
    // A request whose headers are only half sent is "in flight"; the daemon must not cut it
    // off, and must answer it once it completes.
    let mut s = std::net::TcpStream::connect(d.http.unwrap()).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    d.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(b"Connection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    // Draining answers 503 on /health (so load balancers move away) but answers all the same.
    assert!(
        resp.starts_with("HTTP/1.1 503") && resp.contains("degraded"),
        "{resp}"
    );
    assert!(d.wait_exit(Duration::from_secs(10)).unwrap().success());
}

#[test]
fn no_listeners_is_an_error() {
    use crate::util::daemon::Activate;
    let mut d = Daemon::builder()
        .activate(Activate::none())
        .config("[control]\nsocket = \"\"\n")
        .spawn();
    let status = d.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(!status.success());
    assert!(d.stderr().contains("no listeners"), "{}", d.stderr());
}
