//! The plain-HTTP connection wrapper that makes blob bodies zero-copy. Blob bodies are slices
//! of read-only memory mappings (`store::mapped`); when hyper hands such a slice to a vectored
//! write, this wrapper sends it with sendfile(2) from the mapped file at the same offset, so the
//! bytes go from the page cache to the socket without passing through user space (the way nginx
//! serves files). Everything else (headers, other bodies) is written as usual. TLS connections
//! encrypted by rustls are not wrapped (their bytes pass through user space anyway); a kernel
//! TLS socket (`tls::ktls`) is, since the kernel encrypts what sendfile(2) hands it.

use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::store::mapped;

/// A stream whose writes land on one TCP socket as they are (plain TCP, or a socket the
/// kernel encrypts): what sendfile(2) may write to directly.
pub trait Socket: AsyncRead + AsyncWrite + Unpin {
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

pub struct ZeroCopyStream<S = TcpStream>(pub S);

impl<S: Socket> ZeroCopyStream<S> {
    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        fd: i32,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let tcp = self.0.tcp();
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            let sock = tcp.as_raw_fd();
            let r = tcp.try_io(Interest::WRITABLE, || {
                let mut off = offset as libc::off_t;
                let n = unsafe { libc::sendfile(sock, fd, &mut off, len) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }
}

impl<S: Socket> AsyncRead for ZeroCopyStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: Socket> AsyncWrite for ZeroCopyStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some((fd, off)) = mapped::lookup(buf.as_ptr(), buf.len()).filter(|_| !buf.is_empty())
        {
            return this.poll_sendfile(cx, fd, off, buf.len());
        }
        Pin::new(&mut this.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first_mapped = bufs
            .iter()
            .position(|b| !b.is_empty() && mapped::lookup(b.as_ptr(), b.len()).is_some());
        match first_mapped {
            // A mapped buffer first: send it from the file.
            Some(0) => {
                let b = &bufs[0];
                let (fd, off) = mapped::lookup(b.as_ptr(), b.len()).expect("just looked up");
                this.poll_sendfile(cx, fd, off, b.len())
            }
            // Ordinary buffers (headers, chunk framing) before it: write those first.
            Some(k) => Pin::new(&mut this.0).poll_write_vectored(cx, &bufs[..k]),
            None => Pin::new(&mut this.0).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
