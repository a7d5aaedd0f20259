//! Bodies of published blobs as slices of a read-only memory mapping: hyper writes them to the
//! socket straight from the page cache (one kernel copy, no read into a buffer of ours and no
//! allocation per chunk). Only published blobs are mapped: they are immutable (a blob enters
//! `blobs/` by rename and leaves by unlink, never by truncation), so the mapping can never shrink
//! under a reader, which is what would turn an access into SIGBUS.

use bytes::Bytes;
use futures_util::stream;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::http::body::Body;
use crate::store::pins::Pin;

/// Bytes handed to hyper per frame; with vectored writes hyper sends them without copying.
const FRAME: u64 = 4 << 20;

/// A read-only shared mapping of a whole file, unmapped on drop.
pub struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// The mapping is read-only and immutable for its whole life.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `file` (the caller guarantees the file is immutable).
    pub fn new(file: &std::fs::File, len: u64) -> std::io::Result<Mapping> {
        if len == 0 {
            return Err(std::io::Error::other("empty file"));
        }
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        unsafe {
            libc::madvise(ptr, len, libc::MADV_SEQUENTIAL);
        }
        Ok(Mapping { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

/// One frame: a window of the mapping that keeps it (and the blob's pin) alive.
struct Window {
    map: Arc<Mapping>,
    start: usize,
    end: usize,
    _pin: Arc<Pin>,
}

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        &self.map.bytes()[self.start..self.end]
    }
}

/// The body for bytes `start..end` of a mapped blob.
pub fn body(map: Arc<Mapping>, start: u64, end: u64, pin: Pin) -> Body {
    let pin = Arc::new(pin);
    let s = stream::iter((start..end).step_by(FRAME as usize)).map(move |at| {
        let w = Window {
            map: map.clone(),
            start: at as usize,
            end: (at + FRAME).min(end) as usize,
            _pin: pin.clone(),
        };
        Ok::<_, std::io::Error>(Frame::data(Bytes::from_owner(w)))
    });
    BodyExt::boxed(StreamBody::new(s))
}
