//! The UDP server: one OS thread per socket that receives queries in batches with
//! recvmmsg(2), answers what it can on the spot and sends those answers in one sendmmsg(2).
//! Syscalls and context switches are most of the cost of a DNS answer (DESIGN.md): batching
//! takes the server from two syscalls per query to a fraction of one, and a dedicated thread
//! blocking in recvmmsg needs no epoll round trip. Queries that must go upstream become tokio
//! tasks, which send their answer with a non-blocking sendto on the same socket.

use anyhow::{Context, Result};
use socket2::SockAddr;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::answer::{Engine, Outcome, Request, Transport};
use super::forward;
use super::stats::bump;

const BATCH: usize = 32;
/// Larger than any query we accept; a bigger datagram arrives truncated and is dropped.
const BUF: usize = 4096;
/// How often a thread blocked in recvmmsg looks at the cancellation token.
const POLL: Duration = Duration::from_millis(200);

/// Serves `sock` until `cancel`; blocks the calling thread.
pub fn serve(
    sock: UdpSocket,
    engine: Arc<Engine>,
    rt: Handle,
    cancel: CancellationToken,
) -> Result<()> {
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(POLL))?;
    let local = sock.local_addr()?;
    let sock = Arc::new(sock);
    let fd = sock.as_raw_fd();

    let mut bufs = vec![[0u8; BUF]; BATCH];
    // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all-zero is a
    // valid value; the pointers set below point into vectors that outlive every syscall.
    let mut addrs: Vec<libc::sockaddr_storage> = vec![unsafe { zeroed() }; BATCH];
    let mut iovs: Vec<libc::iovec> = vec![unsafe { zeroed() }; BATCH];
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; BATCH];
    let mut replies: Vec<(Vec<u8>, SockAddr)> = Vec::with_capacity(BATCH);

    while !cancel.is_cancelled() {
        for i in 0..BATCH {
            iovs[i].iov_base = bufs[i].as_mut_ptr().cast();
            iovs[i].iov_len = BUF;
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        // SAFETY: hdrs holds BATCH initialised headers whose buffers are valid for writes.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                // The poll timeout, a signal, or an ICMP error queued on the socket by an
                // earlier send to a client that has gone: none of them concern the socket.
                Some(libc::EAGAIN | libc::EINTR | libc::ECONNREFUSED | libc::EHOSTUNREACH)
                | Some(libc::ENETUNREACH) => continue,
                _ => return Err(err).context("recvmmsg on the DNS socket"),
            }
        }
        replies.clear();
        for i in 0..n as usize {
            let h = &hdrs[i];
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                bump(&engine.stats.malformed);
                continue;
            }
            // SAFETY: the kernel wrote a socket address of msg_namelen bytes into addrs[i].
            let src = unsafe { SockAddr::new(addrs[i], h.msg_hdr.msg_namelen) };
            let Some(src_addr) = src.as_socket() else {
                continue;
            };
            let req = Request {
                bytes: &bufs[i][..h.msg_len as usize],
                src: src_addr.ip(),
                local,
                transport: Transport::Udp,
            };
            match engine.handle(&req) {
                Outcome::Reply(reply) => replies.push((reply, src)),
                Outcome::Forward(job) => {
                    let (engine, sock) = (engine.clone(), sock.clone());
                    rt.spawn(async move {
                        let reply = forward::resolve(&engine, job).await;
                        send_nonblocking(sock.as_raw_fd(), &reply, src_addr);
                    });
                }
                Outcome::Drop => {}
            }
        }
        send_batch(fd, &replies);
    }
    Ok(())
}

/// Sends the batch's answers with as few sendmmsg calls as the kernel allows.
fn send_batch(fd: RawFd, replies: &[(Vec<u8>, SockAddr)]) {
    if replies.is_empty() {
        return;
    }
    let mut iovs: Vec<libc::iovec> = replies
        .iter()
        .map(|(r, _)| libc::iovec {
            iov_base: r.as_ptr() as *mut libc::c_void,
            iov_len: r.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = replies
        .iter()
        .zip(iovs.iter_mut())
        .map(|((_, addr), iov)| {
            // SAFETY: all-zero is a valid mmsghdr; the fields set point at live data.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = addr.len();
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let mut sent = 0;
    while sent < hdrs.len() {
        // SAFETY: hdrs[sent..] are initialised headers pointing at replies and addresses
        // that live until the end of this function.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                hdrs[sent..].as_mut_ptr(),
                (hdrs.len() - sent) as libc::c_uint,
                0,
            )
        };
        if n <= 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // A send error belongs to the one datagram at the head (say, an unreachable
            // client): skip it and send the rest.
            tracing::debug!("sendmmsg: {err}");
            sent += 1;
        } else {
            sent += n as usize;
        }
    }
}

/// Sends one answer without ever blocking a runtime thread; a full socket buffer drops it,
/// exactly as the network would.
fn send_nonblocking(fd: RawFd, reply: &[u8], to: SocketAddr) {
    let addr = SockAddr::from(to);
    // SAFETY: reply and addr are valid for the duration of the call.
    let n = unsafe {
        libc::sendto(
            fd,
            reply.as_ptr().cast(),
            reply.len(),
            libc::MSG_DONTWAIT,
            addr.as_ptr(),
            addr.len(),
        )
    };
    if n < 0 {
        tracing::debug!(
            "sending a DNS answer to {to}: {}",
            io::Error::last_os_error()
        );
    }
}
