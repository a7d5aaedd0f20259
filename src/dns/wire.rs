//! Raw DNS wire-format helpers for the parts of a message the hot paths touch without a full
//! parse: the fixed header, a question written as plain labels, the resource records' TTL
//! fields (for the cache) and a truncated copy of a response (for UDP clients whose buffer is
//! too small). Everything is bounds-checked and returns `None` on anything unexpected; callers
//! then take the general (hickory-proto) path or drop the packet.

pub const HEADER_LEN: usize = 12;
/// The EDNS buffer size we advertise (the DNS flag day 2020 recommendation).
pub const EDNS_PAYLOAD: u16 = 1232;
pub const TYPE_OPT: u16 = 41;
pub const CLASS_IN: u16 = 1;

pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// The one question of a query, located in the raw bytes.
#[derive(Debug, Clone, Copy)]
pub struct Question {
    /// Offset just past the question's class field.
    pub end: usize,
    /// Offset of the type field (the name is `HEADER_LEN..qtype_at`).
    pub qtype_at: usize,
    pub qtype: u16,
    pub qclass: u16,
}

impl Question {
    pub fn name_wire<'a>(&self, msg: &'a [u8]) -> &'a [u8] {
        &msg[HEADER_LEN..self.qtype_at]
    }
}

/// Locates the first question when its name is written as plain labels (no compression
/// pointer, at most 255 bytes). `strict` also requires every label byte to be a letter, digit,
/// `-` or `_` (what host names are made of), which the fast path insists on.
pub fn question(msg: &[u8], strict: bool) -> Option<Question> {
    let mut at = HEADER_LEN;
    loop {
        let len = *msg.get(at)? as usize;
        if len == 0 {
            at += 1;
            break;
        }
        if len > 63 {
            return None;
        }
        let label = msg.get(at + 1..at + 1 + len)?;
        if strict
            && !label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        at += 1 + len;
        if at - HEADER_LEN > 255 {
            return None;
        }
    }
    let qtype = u16_at(msg, at)?;
    let qclass = u16_at(msg, at + 2)?;
    Some(Question {
        end: at + 4,
        qtype_at: at,
        qtype,
        qclass,
    })
}

/// Writes a name given as plain wire labels in lower-case dotted form, without the trailing
/// dot ("" for the root). Label bytes outside printable ASCII are written as `\DDD` so that
/// they can never match a configured host name.
pub fn dotted_lower(name_wire: &[u8], out: &mut String) {
    out.clear();
    let mut at = 0;
    while let Some(&len) = name_wire.get(at) {
        if len == 0 {
            break;
        }
        if !out.is_empty() {
            out.push('.');
        }
        for &b in name_wire.get(at + 1..at + 1 + len as usize).unwrap_or(&[]) {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                out.push(b.to_ascii_lowercase() as char);
            } else {
                out.push_str(&format!("\\{b:03}"));
            }
        }
        at += 1 + len as usize;
    }
}

/// Skips a (possibly compressed) name starting at `at`, returning the offset after it.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            1..=63 => at += 1 + len as usize,
            0xC0..=0xFF => {
                msg.get(at + 1)?;
                return Some(at + 2);
            }
            _ => return None,
        }
    }
}

/// The offsets of every TTL field in a response (the OPT pseudo-record's is flags, not a TTL,
/// and is left out) and the smallest TTL among them. `None` if the message does not walk
/// cleanly to its end.
pub fn ttl_fields(msg: &[u8]) -> Option<(Vec<usize>, Option<u32>)> {
    let qd = u16_at(msg, 4)? as usize;
    let rrs = u16_at(msg, 6)? as usize + u16_at(msg, 8)? as usize + u16_at(msg, 10)? as usize;
    let mut at = HEADER_LEN;
    for _ in 0..qd {
        at = skip_name(msg, at)? + 4;
    }
    let mut offsets = Vec::with_capacity(rrs);
    let mut min: Option<u32> = None;
    for _ in 0..rrs {
        at = skip_name(msg, at)?;
        let rtype = u16_at(msg, at)?;
        let ttl = u32_at(msg, at + 4)?;
        let rdlen = u16_at(msg, at + 8)? as usize;
        if rtype != TYPE_OPT {
            offsets.push(at + 4);
            min = Some(min.map_or(ttl, |m| m.min(ttl)));
        }
        at += 10 + rdlen;
        if at > msg.len() {
            return None;
        }
    }
    (at == msg.len()).then_some((offsets, min))
}

/// The EDNS payload size and DO bit of a query whose only additional record is an OPT record
/// right after the question. Returns `(None, false)` when there is no additional record.
pub fn simple_opt(msg: &[u8], q: &Question) -> Option<(Option<u16>, bool)> {
    let arcount = u16_at(msg, 10)?;
    if arcount == 0 {
        return (msg.len() == q.end).then_some((None, false));
    }
    if arcount != 1 {
        return None;
    }
    let at = q.end;
    // Root owner name, type OPT, extended RCODE 0 and version 0.
    if *msg.get(at)? != 0 || u16_at(msg, at + 1)? != TYPE_OPT {
        return None;
    }
    let payload = u16_at(msg, at + 3)?;
    if *msg.get(at + 5)? != 0 || *msg.get(at + 6)? != 0 {
        return None;
    }
    let dnssec_ok = msg.get(at + 7)? & 0x80 != 0;
    let rdlen = u16_at(msg, at + 9)? as usize;
    let mut opt = at + 11;
    if opt + rdlen != msg.len() {
        return None;
    }
    // Options the general parser keeps as opaque bytes: cookies (10) and padding (12).
    while opt < msg.len() {
        let code = u16_at(msg, opt)?;
        let len = u16_at(msg, opt + 2)? as usize;
        if !(code == 10 || code == 12) {
            return None;
        }
        opt += 4 + len;
        if opt > msg.len() {
            return None;
        }
    }
    Some((Some(payload), dnssec_ok))
}

/// The largest UDP response a client accepts: 512 bytes without EDNS, else its advertised size
/// (never below 512).
pub fn udp_limit(payload: Option<u16>) -> usize {
    payload.map_or(512, |p| p.max(512) as usize)
}

/// A truncated copy of a response: its header with TC set and only the question, so that the
/// client retries over TCP (RFC 1035 4.2.1, RFC 7766).
pub fn truncated(response: &[u8]) -> Option<Vec<u8>> {
    let qd = u16_at(response, 4)? as usize;
    let mut at = HEADER_LEN;
    for _ in 0..qd {
        at = skip_name(response, at)? + 4;
    }
    let mut out = response.get(..at)?.to_vec();
    out[2] |= 0x02;
    out[6..12].fill(0);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[&str], qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m
    }

    #[test]
    fn question_and_name() {
        let q = query(&["Registry", "Ollama", "ai"], 28);
        let parsed = question(&q, true).unwrap();
        assert_eq!((parsed.qtype, parsed.qclass, parsed.end), (28, 1, q.len()));
        let mut s = String::new();
        dotted_lower(parsed.name_wire(&q), &mut s);
        assert_eq!(s, "registry.ollama.ai");
        let odd = query(&["a.b", "c"], 1);
        assert!(question(&odd, true).is_none());
        dotted_lower(question(&odd, false).unwrap().name_wire(&odd), &mut s);
        assert_eq!(s, "a\\046b.c");
        assert_eq!(simple_opt(&q, &parsed), Some((None, false)));
    }

    #[test]
    fn truncated_keeps_question_only() {
        let mut r = query(&["x"], 16);
        r[2] |= 0x80;
        r[7] = 1;
        r.extend_from_slice(&[0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0, 2, 1, b'a']);
        let (offsets, min) = ttl_fields(&r).unwrap();
        assert_eq!((offsets.len(), min), (1, Some(60)));
        let t = truncated(&r).unwrap();
        assert_eq!(t.len(), 12 + 3 + 4);
        assert_eq!(t[2] & 0x02, 0x02);
        assert_eq!(&t[6..12], &[0; 6]);
    }
}
