//! Arbitrary `Range`, `If-Range` and `If-None-Match` values and blob sizes into the data plane's
//! `plan_for`, which decides which bytes of a blob a GET is answered with. It must never panic
//! (no overflow on `bytes=-18446744073709551615` or a zero-byte blob), and a planned part must
//! lie inside the blob and be non-empty: `start < end <= size`, so `Content-Range` is always
//! `bytes start-(end-1)/size` with `start <= end-1 < size`.
//!
//! Input layout: 8 bytes of size, 1 byte of flags, then up to three header values separated
//! by `\n` (Range, If-Range, If-None-Match).

#![no_main]

use http::{header, HeaderMap, HeaderValue};
use lancached::proxy::dataplane::{plan_for, Plan};
use libfuzzer_sys::fuzz_target;

const ETAG: &str = "\"sha256:2af3b81862c6be03c769683af18efdadb2c33f60ff32ab6f83e42c043d6c7816\"";

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let raw = u64::from_le_bytes(data[..8].try_into().unwrap());
    let flags = data[8];
    // Mostly small sizes, so ranges written as short numbers land inside, on and past the end.
    let size = match flags & 3 {
        0 => raw % 64,
        1 => raw % 100_000,
        2 => u64::MAX - (raw % 4),
        _ => raw,
    };
    let mut values = data[9..].split(|&b| b == b'\n');
    let mut headers = HeaderMap::new();
    let mut has_range = false;
    if let Some(v) = values.next().and_then(|v| HeaderValue::from_bytes(v).ok()) {
        headers.insert(header::RANGE, v);
        has_range = true;
    }
    let if_range = values.next();
    if flags & 4 != 0 {
        headers.insert(header::IF_RANGE, HeaderValue::from_static(ETAG));
    } else if let Some(v) = if_range.and_then(|v| HeaderValue::from_bytes(v).ok()) {
        if flags & 8 != 0 {
            headers.insert(header::IF_RANGE, v);
        }
    }
    if flags & 16 != 0 {
        if let Some(v) = values.next().and_then(|v| HeaderValue::from_bytes(v).ok()) {
            headers.insert(header::IF_NONE_MATCH, v);
        }
    }

    let plan = plan_for(&headers, size, ETAG);
    match plan {
        Plan::Part(start, end) => {
            assert!(has_range, "a part planned without a Range header");
            assert!(
                start < end && end <= size,
                "part {start}..{end} of a {size}-byte blob for {headers:?}"
            );
            let last = end - 1;
            assert!(start <= last && last < size);
        }
        Plan::Unsatisfiable => assert!(has_range, "416 without a Range header"),
        Plan::NotModified => assert!(headers.contains_key(header::IF_NONE_MATCH)),
        Plan::Whole => {}
    }
});
