//! The daemon's sockets: taken from systemd socket activation, or bound from the configuration.
//!
//! This runs before the tokio runtime starts, for two reasons: taking `LISTEN_*` out of the
//! environment is only sound while the process has one thread, and binding privileged ports
//! must happen before anything else could fail half-way. Activated sockets are told apart by
//! their `FileDescriptorName=` *and* their `SO_TYPE`, because the DNS unit hands over a UDP and a
//! TCP socket that both carry the name `dns`. A socket with a name we do not know, or of a type
//! its name does not take, is an error: silently ignoring it would leave a port bound and dead.

use anyhow::{bail, Context, Result};
use nix::sys::socket::{
    getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage,
};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use crate::config::Config;

/// All sockets the daemon serves on, grouped by subsystem.
#[derive(Debug, Default)]
pub struct Listeners {
    pub dns_udp: Vec<UdpSocket>,
    pub dns_tcp: Vec<TcpListener>,
    pub http: Vec<TcpListener>,
    pub https: Vec<TcpListener>,
    pub control: Vec<UnixListener>,
    /// Whether these came from systemd (reload can then not change listen addresses).
    pub activated: bool,
}

/// What one inherited descriptor is, as far as classification cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    Udp,
    Tcp,
    Unix,
    Other,
}

/// Which subsystem slot an inherited socket goes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    DnsUdp,
    DnsTcp,
    Http,
    Https,
    Control,
}

/// Reads `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` (as given) and returns the inherited
/// descriptors with their names. `None` when the sockets are not meant for this process (no
/// `LISTEN_PID`, or another process's pid): systemd's own rule, so a stray environment from a
/// parent never makes us grab descriptors that are not sockets.
pub fn parse_activation_env(
    my_pid: u32,
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
) -> Result<Option<Vec<(RawFd, String)>>> {
    let Some(pid) = listen_pid else {
        return Ok(None);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .with_context(|| format!("LISTEN_PID={pid:?} is not a process id"))?;
    if pid != my_pid {
        return Ok(None);
    }
    let Some(count) = listen_fds else {
        return Ok(None);
    };
    let count: usize = count
        .trim()
        .parse()
        .with_context(|| format!("LISTEN_FDS={count:?} is not a number"))?;
    if count > 64 {
        bail!("LISTEN_FDS={count} is more sockets than lancached ever takes");
    }
    let names: Vec<String> = match listen_fdnames {
        Some(names) if !names.is_empty() => names.split(':').map(str::to_string).collect(),
        _ => vec!["unknown".to_string(); count],
    };
    if names.len() != count {
        bail!(
            "LISTEN_FDNAMES names {} sockets but LISTEN_FDS={count}",
            names.len()
        );
    }
    Ok(Some(
        names
            .into_iter()
            .enumerate()
            .map(|(i, n)| (3 + i as RawFd, n))
            .collect(),
    ))
}

/// Decides the slot of one inherited socket from its name and type.
pub fn classify(name: &str, kind: SocketKind) -> Result<Slot> {
    let slot = match (name, kind) {
        ("dns", SocketKind::Udp) => Slot::DnsUdp,
        ("dns", SocketKind::Tcp) => Slot::DnsTcp,
        ("http", SocketKind::Tcp) => Slot::Http,
        ("https", SocketKind::Tcp) => Slot::Https,
        ("control", SocketKind::Unix) => Slot::Control,
        ("dns" | "http" | "https" | "control", kind) => {
            bail!("activated socket {name:?} is a {kind:?} socket, which that name does not take")
        }
        (other, _) => bail!(
            "activated socket named {other:?} is not one lancached uses \
             (FileDescriptorName= must be dns, http, https or control)"
        ),
    };
    Ok(slot)
}

fn socket_kind(fd: RawFd) -> Result<SocketKind> {
    // SAFETY: the fd is one systemd passed us; we only query it here.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let ty = getsockopt(&borrowed, sockopt::SockType)
        .with_context(|| format!("fd {fd} is not a socket"))?;
    let addr: SockaddrStorage =
        getsockname(fd).with_context(|| format!("getsockname on fd {fd}"))?;
    Ok(match (addr.family(), ty) {
        (Some(AddressFamily::Unix), SockType::Stream) => SocketKind::Unix,
        (Some(AddressFamily::Inet | AddressFamily::Inet6), SockType::Datagram) => SocketKind::Udp,
        (Some(AddressFamily::Inet | AddressFamily::Inet6), SockType::Stream) => SocketKind::Tcp,
        _ => SocketKind::Other,
    })
}

impl Listeners {
    /// Takes activated sockets if systemd (or a test harness) passed any, else binds the
    /// configuration's addresses. Must run before any thread is started.
    pub fn acquire(config: &Config) -> Result<Listeners> {
        let env = |k: &str| std::env::var(k).ok();
        let inherited = parse_activation_env(
            std::process::id(),
            env("LISTEN_PID").as_deref(),
            env("LISTEN_FDS").as_deref(),
            env("LISTEN_FDNAMES").as_deref(),
        )?;
        // SAFETY: called from main before the runtime (or any other thread) exists.
        unsafe {
            std::env::remove_var("LISTEN_PID");
            std::env::remove_var("LISTEN_FDS");
            std::env::remove_var("LISTEN_FDNAMES");
        }
        match inherited {
            Some(fds) if !fds.is_empty() => Listeners::from_activation(fds),
            _ => Listeners::bind(config),
        }
    }

    fn from_activation(fds: Vec<(RawFd, String)>) -> Result<Listeners> {
        let mut l = Listeners {
            activated: true,
            ..Default::default()
        };
        for (fd, name) in fds {
            nix::fcntl::fcntl(
                unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .with_context(|| format!("activated fd {fd} ({name})"))?;
            let slot = classify(&name, socket_kind(fd)?)?;
            // SAFETY: systemd hands each descriptor over exactly once; we take ownership here.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            match slot {
                Slot::DnsUdp => l.dns_udp.push(UdpSocket::from(owned)),
                Slot::DnsTcp => l.dns_tcp.push(TcpListener::from(owned)),
                Slot::Http => l.http.push(TcpListener::from(owned)),
                Slot::Https => l.https.push(TcpListener::from(owned)),
                Slot::Control => l.control.push(UnixListener::from(owned)),
            }
        }
        Ok(l)
    }

    /// Binds every `listen` address of the configuration (IPv4 and IPv6).
    pub fn bind(config: &Config) -> Result<Listeners> {
        let mut l = Listeners::default();
        for addr in &config.dns.listen {
            l.dns_udp.push(
                bind_udp(*addr).with_context(|| format!("dns.listen: cannot bind udp {addr}"))?,
            );
            l.dns_tcp.push(
                bind_tcp(*addr).with_context(|| format!("dns.listen: cannot bind tcp {addr}"))?,
            );
        }
        for addr in &config.http.listen {
            l.http
                .push(bind_tcp(*addr).with_context(|| format!("http.listen: cannot bind {addr}"))?);
        }
        for addr in &config.tls.listen {
            l.https
                .push(bind_tcp(*addr).with_context(|| format!("tls.listen: cannot bind {addr}"))?);
        }
        if !config.control.socket.as_os_str().is_empty() {
            l.control.push(bind_unix(&config.control.socket)?);
        }
        Ok(l)
    }

    /// One line per listener, for `lancachectl status` and the start-up log.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let how = if self.activated {
            " (socket-activated)"
        } else {
            ""
        };
        let mut out = Vec::new();
        let addr = |fd: RawFd| -> String {
            getsockname::<SockaddrStorage>(fd)
                .ok()
                .and_then(|a| {
                    if let Some(v4) = a.as_sockaddr_in() {
                        Some(SocketAddr::from(std::net::SocketAddrV4::from(*v4)).to_string())
                    } else if let Some(v6) = a.as_sockaddr_in6() {
                        Some(SocketAddr::from(std::net::SocketAddrV6::from(*v6)).to_string())
                    } else {
                        a.as_unix_addr()
                            .and_then(|u| u.path())
                            .map(|p| p.display().to_string())
                    }
                })
                .unwrap_or_else(|| "?".into())
        };
        for s in &self.dns_udp {
            out.push(("dns", format!("udp {}{how}", addr(s.as_raw_fd()))));
        }
        for s in &self.dns_tcp {
            out.push(("dns", format!("tcp {}{how}", addr(s.as_raw_fd()))));
        }
        for s in &self.http {
            out.push(("http", format!("tcp {}{how}", addr(s.as_raw_fd()))));
        }
        for s in &self.https {
            out.push(("https", format!("tcp {}{how}", addr(s.as_raw_fd()))));
        }
        for s in &self.control {
            out.push(("control", format!("unix {}{how}", addr(s.as_raw_fd()))));
        }
        out
    }
}

fn bind_tcp(addr: SocketAddr) -> Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // `[::]:80` should not also claim the IPv4 port: configs list both when they want both.
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn bind_udp(addr: SocketAddr) -> Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Default buffers (208 KiB) drop queries under load for every server (DESIGN.md); the
    // kernel caps this at net.core.rmem_max, which is fine.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn bind_unix(path: &Path) -> Result<UnixListener> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("control.socket: cannot create {}", parent.display()))?;
    }
    // A socket file left by a previous run (kill -9) would make bind fail; only remove it when
    // nobody answers on it, so two daemons never steal each other's socket.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "control.socket: {} is in use by a running daemon",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("control.socket: cannot remove stale {}", path.display()))?;
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("control.socket: cannot bind {}", path.display()))?;
    // Authorisation is by peer credentials, but the file mode keeps others from even connecting.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_env_for_us() {
        let fds = parse_activation_env(42, Some("42"), Some("3"), Some("dns:dns:http"))
            .unwrap()
            .unwrap();
        assert_eq!(
            fds,
            vec![(3, "dns".into()), (4, "dns".into()), (5, "http".into())]
        );
    }

    #[test]
    fn activation_env_missing_pid_or_other_pid() {
        assert!(parse_activation_env(42, None, Some("1"), Some("http"))
            .unwrap()
            .is_none());
        assert!(
            parse_activation_env(42, Some("43"), Some("1"), Some("http"))
                .unwrap()
                .is_none()
        );
        assert!(parse_activation_env(42, Some("42"), None, None)
            .unwrap()
            .is_none());
    }

    #[test]
    fn activation_env_errors() {
        assert!(parse_activation_env(42, Some("x"), Some("1"), None).is_err());
        assert!(parse_activation_env(42, Some("42"), Some("two"), None).is_err());
        let err = parse_activation_env(42, Some("42"), Some("2"), Some("http")).unwrap_err();
        assert!(err.to_string().contains("LISTEN_FDNAMES"), "{err}");
    }

    #[test]
    fn unnamed_sockets_are_unknown() {
        let fds = parse_activation_env(1, Some("1"), Some("2"), None)
            .unwrap()
            .unwrap();
        assert!(fds.iter().all(|(_, n)| n == "unknown"));
        let err = classify("unknown", SocketKind::Tcp).unwrap_err();
        assert!(err.to_string().contains("FileDescriptorName"), "{err}");
    }

    #[test]
    fn classification_by_name_and_type() {
        assert_eq!(classify("dns", SocketKind::Udp).unwrap(), Slot::DnsUdp);
        assert_eq!(classify("dns", SocketKind::Tcp).unwrap(), Slot::DnsTcp);
        assert_eq!(classify("http", SocketKind::Tcp).unwrap(), Slot::Http);
        assert_eq!(classify("https", SocketKind::Tcp).unwrap(), Slot::Https);
        assert_eq!(
            classify("control", SocketKind::Unix).unwrap(),
            Slot::Control
        );
        assert!(classify("http", SocketKind::Udp).is_err());
        assert!(classify("control", SocketKind::Tcp).is_err());
        assert!(classify("ftp", SocketKind::Tcp).is_err());
    }

    #[test]
    fn real_socket_kinds() {
        let t = TcpListener::bind("127.0.0.1:0").unwrap();
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let x = UnixListener::bind(dir.path().join("s")).unwrap();
        assert_eq!(socket_kind(t.as_raw_fd()).unwrap(), SocketKind::Tcp);
        assert_eq!(socket_kind(u.as_raw_fd()).unwrap(), SocketKind::Udp);
        assert_eq!(socket_kind(x.as_raw_fd()).unwrap(), SocketKind::Unix);
    }
}
