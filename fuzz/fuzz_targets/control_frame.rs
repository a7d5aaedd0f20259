//! Arbitrary bytes as a control-socket frame (a 4-byte big-endian length, then JSON), read the
//! way `lancachectl` reads one, and as the bare JSON body the daemon decodes. It must never
//! panic; no single allocation may exceed `MAX_FRAME` however large the length prefix claims
//! to be (the bound that keeps a hostile local client from making us buffer gigabytes); and
//! every request that decodes must survive `write_frame` then `read_frame` unchanged.

#![no_main]

use lancache_protocol::{read_frame, write_frame, FrameError, Request, MAX_FRAME};
use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, remembering the largest single request since the last reset.
struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LARGEST.fetch_max(new, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Largest = Largest;

fn round_trip(req: &Request) {
    let mut buf = Vec::new();
    write_frame(&mut buf, req).expect("a decoded request encodes");
    let back: Request = read_frame(&mut buf.as_slice()).expect("an encoded request decodes");
    assert_eq!(&back, req, "request changed across write_frame/read_frame");
}

fuzz_target!(|data: &[u8]| {
    LARGEST.store(0, Ordering::Relaxed);
    let framed = read_frame::<Request>(&mut &data[..]);
    let largest = LARGEST.load(Ordering::Relaxed);
    // JSON parsing allocates in proportion to the input, which libFuzzer keeps far below MAX_FRAME.
    assert!(
        largest <= MAX_FRAME,
        "read_frame allocated {largest} bytes at once"
    );
    if data.len() >= 4 {
        let claimed = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
        if claimed > MAX_FRAME {
            assert!(
                matches!(framed, Err(FrameError::TooLarge(n)) if n == claimed),
                "a {claimed}-byte length prefix was not refused: {framed:?}"
            );
        }
    }
    if let Ok(req) = &framed {
        round_trip(req);
    }
    if let Ok(req) = serde_json::from_slice::<Request>(data) {
        round_trip(&req);
    }
});
