//! One request, one response over the control socket.

use lancache_protocol::{read_frame, write_frame, Request, Response};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Sends `request` and waits for the answer. The error says which socket was tried and why it
/// failed, worded for someone who has to fix it.
pub fn call(socket: &Path, request: &Request) -> Result<Response, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => {
                " (is lancached running? set --socket or LANCACHE_SOCKET)"
            }
            std::io::ErrorKind::PermissionDenied => {
                " (run as root or as a member of the `lancache` group)"
            }
            std::io::ErrorKind::ConnectionRefused => {
                " (the socket exists but nobody is listening: is lancached running?)"
            }
            _ => "",
        };
        format!("cannot reach lancached at {}: {e}{hint}", socket.display())
    })?;
    // A prune of a big cache can take a while; a wedged daemon should not hang scripts forever.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(600)));
    // A refused caller is answered (and hung up on) before its request is read, so a failed
    // write may still leave the daemon's explanation waiting to be read.
    let sent = write_frame(&mut stream, request);
    if let Err(e) = sent {
        return match read_frame(&mut stream) {
            Ok(resp) => Ok(resp),
            Err(_) => Err(format!(
                "cannot send to lancached at {}: {e}",
                socket.display()
            )),
        };
    }
    read_frame(&mut stream).map_err(|e| {
        format!(
            "no valid answer from lancached at {}: {e}",
            socket.display()
        )
    })
}
