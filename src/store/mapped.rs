//! Read-only memory mappings of blob files, for serving and hashing without copying through a
//! buffer of ours. A mapping must only ever cover a file that is not truncated while mapped
//! (touching a page past the end of a shrunk file is SIGBUS): published blobs are immutable, and
//! a fill's data file is created at its full size and replaced by unlink + create, never
//! truncated in place.
//!
//! Every live mapping is registered with its file descriptor, so that the HTTP connection
//! wrapper (`http::zerocopy`) can recognise a buffer that lies inside one and hand it to the
//! kernel with sendfile(2) instead of copying it from user space.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, RwLock};

/// Live mappings by start address: (length, the mapped file's descriptor).
static REGISTRY: RwLock<BTreeMap<usize, (usize, RawFd)>> = RwLock::new(BTreeMap::new());

/// If `[ptr, ptr+len)` lies inside a live mapping: the mapped file and the offset in it. The
/// caller must hold (through the buffer's owner) the mapping for as long as it uses the fd.
pub fn lookup(ptr: *const u8, len: usize) -> Option<(RawFd, u64)> {
    let addr = ptr as usize;
    let reg = REGISTRY.read().unwrap();
    let (&start, &(mlen, fd)) = reg.range(..=addr).next_back()?;
    (addr + len <= start + mlen).then_some((fd, (addr - start) as u64))
}

/// A read-only shared mapping of a whole file, unmapped on drop.
pub struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
    /// Kept open for sendfile(2) for as long as the mapping lives.
    _fd: OwnedFd,
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
        let fd: OwnedFd = match file.try_clone() {
            Ok(f) => f.into(),
            Err(e) => {
                unsafe { libc::munmap(ptr, len) };
                return Err(e);
            }
        };
        REGISTRY
            .write()
            .unwrap()
            .insert(ptr as usize, (len, fd.as_raw_fd()));
        Ok(Mapping { ptr, len, _fd: fd })
    }

    pub fn bytes(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Unregistered before the address range can be reused by another mapping.
        REGISTRY.write().unwrap().remove(&(self.ptr as usize));
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
