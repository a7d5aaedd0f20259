//! A small cache of forwarded responses, honouring their TTLs: an entry lives as long as the
//! smallest TTL in it, and every TTL in a served copy is counted down by the time it spent
//! here. Only complete NOERROR/NXDOMAIN answers with at least one record are kept. Keyed by
//! the lower-cased question plus the DO and CD bits (they change what upstream returns).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::wire;

const MAX_ENTRIES: usize = 10_000;
/// Longest an entry lives, whatever its TTLs say.
const MAX_TTL: u32 = 86_400;

struct Entry {
    response: Vec<u8>,
    ttl_fields: Vec<usize>,
    stored: Instant,
    ttl: u32,
}

#[derive(Default)]
pub struct Cache {
    entries: Mutex<HashMap<Vec<u8>, Entry>>,
}

/// The cache key of a query: lower-cased question name + type + class + DO and CD bits.
pub fn key(msg: &[u8], q: &wire::Question, dnssec_ok: bool) -> Vec<u8> {
    let name = q.name_wire(msg);
    let mut k = Vec::with_capacity(name.len() + 5);
    k.extend(name.iter().map(u8::to_ascii_lowercase));
    k.extend_from_slice(&msg[q.qtype_at..q.end]);
    k.push(u8::from(dnssec_ok) | (msg[3] & 0x10));
    k
}

impl Cache {
    /// A copy of the cached response to `query`, with the query's ID and question (its exact
    /// letter case) and TTLs counted down; `None` on a miss or an expired entry.
    pub fn get(&self, key: &[u8], query: &[u8], q: &wire::Question) -> Option<Vec<u8>> {
        let entries = self.entries.lock().unwrap();
        let e = entries.get(key)?;
        let age = u32::try_from(e.stored.elapsed().as_secs()).unwrap_or(u32::MAX);
        if age >= e.ttl {
            return None;
        }
        let mut out = e.response.clone();
        let fields = e.ttl_fields.clone();
        drop(entries);
        out[..2].copy_from_slice(&query[..2]);
        out.get_mut(wire::HEADER_LEN..q.end)?
            .copy_from_slice(&query[wire::HEADER_LEN..q.end]);
        for at in fields {
            let ttl = wire::u32_at(&out, at)?.saturating_sub(age);
            out[at..at + 4].copy_from_slice(&ttl.to_be_bytes());
        }
        Some(out)
    }

    pub fn insert(&self, key: Vec<u8>, response: &[u8]) {
        let rcode = response.get(3).map(|b| b & 0x0F);
        let truncated = response.get(2).is_some_and(|b| b & 0x02 != 0);
        if truncated || !matches!(rcode, Some(0) | Some(3)) {
            return;
        }
        let Some((ttl_fields, Some(ttl))) = wire::ttl_fields(response) else {
            return;
        };
        if ttl == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap();
        if entries.len() >= MAX_ENTRIES {
            let now = Instant::now();
            entries.retain(|_, e| now.duration_since(e.stored).as_secs() < u64::from(e.ttl));
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            key,
            Entry {
                response: response.to_vec(),
                ttl_fields,
                stored: Instant::now(),
                ttl: ttl.min(MAX_TTL),
            },
        );
    }

    pub fn clear(&self) {
        self.entries.lock().unwrap().clear();
    }
}
