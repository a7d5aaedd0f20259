//! Read-only memory mappings of blob files, for serving and hashing without copying through a
//! buffer of ours. A mapping must only ever cover a file that is not truncated while mapped
//! (touching a page past the end of a shrunk file is SIGBUS): published blobs are immutable, and
//! a fill's data file is created at its full size and replaced by unlink + create, never
//! truncated in place.

use bytes::Bytes;
use std::os::fd::AsRawFd;
use std::sync::Arc;

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

    pub fn bytes(&self) -> &[u8] {
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

/// A window of a mapping that keeps it alive: the owner of a zero-copy [`Bytes`].
struct Window {
    map: Arc<Mapping>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        &self.map.bytes()[self.start..self.end]
    }
}

/// Bytes `start..end` of the mapping, without copying.
pub fn slice(map: &Arc<Mapping>, start: u64, end: u64) -> Bytes {
    Bytes::from_owner(Window {
        map: map.clone(),
        start: start as usize,
        end: end as usize,
    })
}
