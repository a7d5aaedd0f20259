//! Which path TLS hits take: kernel TLS, where the kernel offers it, so that blob bodies leave
//! through sendfile(2) again (the kernel encrypts the page-cache pages into records); otherwise
//! rustls in user space. The probe runs once at start on a loopback connection of its own: the
//! `tls` upper-layer protocol must be attachable to an established TCP socket
//! (`setsockopt(TCP_ULP, "tls")`). Without the `tls` module that fails with ENOENT, which is
//! what these build machines answer; the daemon then logs why and serves every connection with
//! rustls.
//!
//! Where the ULP attaches, the `ktls` crate (maintained under the rustls organisation) hands the
//! session keys to the kernel after each handshake (rustls `enable_secret_extraction`); which
//! cipher suites the kernel accepts is probed once more through it, and a connection whose suite
//! the kernel refuses stays on rustls. That path can only run where the kernel has the `tls`
//! module; these machines do not, so its tests here cover the probe and the fallback.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use crate::http::zerocopy::Socket;

/// A connection the kernel encrypts: reads go through `ktls` (which turns TLS alerts into
/// errors and hands back what rustls had already decrypted), writes land on the socket as
/// they are, so sendfile(2) may write to it too.
pub type KernelStream = ktls::KtlsStream<tokio::net::TcpStream>;

impl Socket for KernelStream {
    fn tcp(&self) -> &tokio::net::TcpStream {
        self.get_ref()
    }
}

/// The kernel's side, once the probe said the ULP attaches: the cipher suites it accepts.
pub struct Kernel {
    ciphers: ktls::CompatibleCiphers,
}

impl Kernel {
    /// Asks the kernel which suites it takes (a few loopback connections of `ktls`'s own).
    pub async fn new() -> io::Result<Kernel> {
        Ok(Kernel {
            ciphers: ktls::CompatibleCiphers::new().await?,
        })
    }

    /// Whether this handshake's keys can go to the kernel. Asked before handing them over,
    /// because a refused hand-over has already consumed the rustls session.
    pub fn takes(&self, tls: &ktls_server::Stream) -> bool {
        tls.get_ref()
            .1
            .negotiated_cipher_suite()
            .is_some_and(|s| self.ciphers.is_compatible(s))
    }
}

/// The handshake's stream type on the kernel path: `ktls` must see rustls' reads record by
/// record (its `CorkStream`) to take over at a record boundary.
pub mod ktls_server {
    pub type Stream = tokio_rustls::server::TlsStream<ktls::CorkStream<tokio::net::TcpStream>>;
}

/// Probes for kernel TLS once at start and logs which path TLS hits take; the kernel's side
/// where it is used, `None` for user space.
pub async fn start() -> Option<Kernel> {
    let mut path = detect();
    let kernel = match path {
        TlsPath::Kernel => match Kernel::new().await {
            Ok(k) => Some(k),
            Err(e) => {
                path = TlsPath::UserSpace(format!("cipher probe failed: {e}"));
                None
            }
        },
        TlsPath::UserSpace(_) => None,
    };
    tracing::info!("{}", path.describe());
    kernel
}

/// Hands a finished handshake's keys to the kernel.
pub async fn upgrade(tls: ktls_server::Stream) -> Result<KernelStream, ktls::Error> {
    ktls::config_ktls_server(tls).await
}

/// How TLS hits are served, decided once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsPath {
    /// The kernel encrypts: bodies go out with sendfile(2).
    Kernel,
    /// rustls encrypts in user space; the reason kernel TLS is not used.
    UserSpace(String),
}

impl TlsPath {
    /// The line the daemon logs at start.
    pub fn describe(&self) -> String {
        match self {
            TlsPath::Kernel => "TLS hits: kernel TLS + sendfile".to_string(),
            TlsPath::UserSpace(why) => {
                format!("TLS hits: user-space rustls (kTLS unavailable: {why})")
            }
        }
    }
}

/// Attaches the `tls` ULP to a fresh loopback connection: `Ok` when the kernel offers kTLS,
/// else the error (ENOENT: no `tls` module).
pub fn probe_ulp() -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    // The ULP attaches only to an established socket; accepting makes sure ours is.
    let (_server, _) = listener.accept()?;
    set_ulp(&client)
}

fn set_ulp(sock: &TcpStream) -> io::Result<()> {
    let name = b"tls";
    // SAFETY: a valid socket fd and a pointer/length pair into a live byte string.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_ULP,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The path from a probe's outcome. `LANCACHED_KTLS=off` forces user space (to compare the
/// two on a kernel that has kTLS).
pub fn choose(probe: io::Result<()>, env: Option<&str>) -> TlsPath {
    if env == Some("off") {
        return TlsPath::UserSpace("turned off by LANCACHED_KTLS=off".to_string());
    }
    match probe {
        Ok(()) => TlsPath::Kernel,
        Err(e) => TlsPath::UserSpace(errno_name(&e)),
    }
}

/// "ENOENT" rather than "No such file or directory (os error 2)": the log line then reads
/// like the kernel's answer.
fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "ENOENT".to_string(),
        Some(libc::ENOPROTOOPT) => "ENOPROTOOPT".to_string(),
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP".to_string(),
        Some(libc::EPERM) => "EPERM".to_string(),
        _ => e.to_string(),
    }
}

/// Probes the kernel and picks the path (see [`choose`]).
pub fn detect() -> TlsPath {
    let env = std::env::var("LANCACHED_KTLS").ok();
    choose(probe_ulp(), env.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_module_means_user_space_and_says_enoent() {
        let path = choose(Err(io::Error::from_raw_os_error(libc::ENOENT)), None);
        assert_eq!(path, TlsPath::UserSpace("ENOENT".into()));
        assert_eq!(
            path.describe(),
            "TLS hits: user-space rustls (kTLS unavailable: ENOENT)"
        );
    }

    #[test]
    fn an_attachable_ulp_means_kernel_tls_unless_turned_off() {
        assert_eq!(choose(Ok(()), None), TlsPath::Kernel);
        assert_eq!(
            TlsPath::Kernel.describe(),
            "TLS hits: kernel TLS + sendfile"
        );
        assert!(matches!(choose(Ok(()), Some("off")), TlsPath::UserSpace(_)));
    }

    /// The fallback the daemon takes at start: where the ULP does not attach (these
    /// machines), no kernel side, so every connection is served by rustls.
    #[tokio::test]
    async fn start_falls_back_to_rustls_where_the_ulp_does_not_attach() {
        if probe_ulp().is_err() {
            assert!(start().await.is_none());
        }
        std::env::set_var("LANCACHED_KTLS", "off");
        assert!(matches!(detect(), TlsPath::UserSpace(_)));
        std::env::remove_var("LANCACHED_KTLS");
    }

    /// The real probe on this kernel: whatever it answers, it answers without panicking, and
    /// an error is one of the kernel's (these machines: ENOENT).
    #[test]
    fn the_probe_runs_on_this_kernel() {
        match probe_ulp() {
            Ok(()) => assert_eq!(choose(Ok(()), None), TlsPath::Kernel),
            Err(e) => {
                assert!(e.raw_os_error().is_some(), "{e}");
                assert!(matches!(choose(Err(e), None), TlsPath::UserSpace(_)));
            }
        }
    }
}
