//! The request path: one DNS message in, one decision out (a reply, a job for the upstream
//! resolvers, or silence). Synchronous and free of I/O so that the UDP and TCP servers, the
//! tests and the fuzzer all drive exactly the same code.
//!
//! Two ways to the same answer: [`Engine::fast`] handles the common query (one plain question,
//! at most a bare OPT record) for an intercepted name or a cached forward by writing bytes
//! straight from the query, and [`Engine::general`] parses the whole message with hickory-proto
//! and builds the reply as a `Message`. Whenever the fast path answers, it answers exactly what
//! the general path would (a unit test and the fuzz target hold it to that); anything it is not
//! sure about it leaves to the general path.

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, HINFO};
use hickory_proto::rr::{RData, Record};
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::advertise::{Advertise, Shared};
use super::cache::{self, Cache};
use super::ratelimit::RateLimiter;
use super::stats::{bump, Stats};
use super::table::{canonical, Table};
use super::wire::{self, CLASS_IN, EDNS_PAYLOAD, HEADER_LEN};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_ANY: u16 = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One received DNS message and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub bytes: &'a [u8],
    pub src: IpAddr,
    /// The local address it arrived on (answers for intercepted names fall back to it).
    pub local: SocketAddr,
    pub transport: Transport,
}

#[derive(Debug)]
pub enum Outcome {
    Reply(Vec<u8>),
    Forward(Forward),
    Drop,
}

/// A query to relay upstream, and what to do with the answer.
#[derive(Debug, Clone)]
pub struct Forward {
    /// The client's query as received.
    pub query: Vec<u8>,
    /// Offset just past the question (upstream answers must echo the question).
    pub question_end: usize,
    /// Key under which to cache the answer, when caching is on.
    pub cache_key: Option<Vec<u8>>,
    /// For UDP clients, the largest response they accept; `None` over TCP.
    pub udp_limit: Option<usize>,
    /// The address the query arrived on: a resolver at this address would be ourselves.
    pub local: SocketAddr,
}

/// The DNS service's shared state: the policy in force, counters, response cache, rate limiter.
pub struct Engine {
    table: ArcSwap<Table>,
    pub stats: Arc<Stats>,
    pub cache: Cache,
    limiter: RateLimiter,
    /// Forwarded queries waiting for upstream; bounded by [`MAX_IN_FLIGHT`].
    pub in_flight: std::sync::atomic::AtomicUsize,
    /// Addresses set from outside (cluster mode), answered instead of the table's.
    advertised: Shared,
}

/// What intercepted names are answered with: the set given from outside (cluster mode's
/// healthy nodes) when there is one, else the table's for the address the query came in on,
/// which is only worked out when it is needed.
fn advertise_for<'a>(
    set: &'a Option<Arc<Advertise>>,
    table: &'a Table,
    local: SocketAddr,
) -> std::borrow::Cow<'a, Advertise> {
    match set {
        Some(a) => std::borrow::Cow::Borrowed(a),
        None => table.advertise_for(local),
    }
}

/// Forwarded queries waiting for upstream at once. Past it new ones get SERVFAIL at once: each
/// holds a socket, and a flood (or a forwarding loop) must not run the daemon out of them.
pub const MAX_IN_FLIGHT: usize = 2048;

thread_local! {
    static NAME: RefCell<String> = RefCell::new(String::with_capacity(256));
}

impl Engine {
    pub fn new(table: Table, stats: Arc<Stats>) -> Engine {
        Engine {
            table: ArcSwap::from_pointee(table),
            stats,
            cache: Cache::default(),
            limiter: RateLimiter::default(),
            in_flight: Default::default(),
            advertised: Shared::default(),
        }
    }

    /// Answers intercepted names with `shared` whenever it is set (cluster mode's healthy
    /// nodes), else with the table's set.
    pub fn with_advertised(mut self, shared: Shared) -> Engine {
        self.advertised = shared;
        self
    }

    pub fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// Puts a reloaded policy in force. Cached forwards are dropped: the resolvers may have
    /// changed, and a name may have become intercepted.
    pub fn set_table(&self, table: Table) {
        self.table.store(Arc::new(table));
        self.cache.clear();
    }

    /// The whole request path: source checks, rate limit, then the fast or the general path.
    pub fn handle(&self, req: &Request) -> Outcome {
        let b = req.bytes;
        // Shorter than a header, or a response (QR set): nothing sensible to answer, and
        // answering responses is how reflection loops start.
        if b.len() < HEADER_LEN || b[2] & 0x80 != 0 {
            bump(&self.stats.malformed);
            return Outcome::Drop;
        }
        let table = self.table.load();
        // The limit comes first so that refusals, too, cannot be used to flood a spoofed victim.
        // The limit is for UDP only, as in BIND's and Knot's response rate limiting: that is
        // where a spoofed source can turn the cache against a victim. A TCP client has proven
        // its address, and TCP is where a limited client is sent to ask again.
        if req.transport == Transport::Udp
            && !self.limiter.allow(canonical(req.src), table.rate_limit)
        {
            bump(&self.stats.rate_limited);
            // Slip 1: a client of ours over the limit (most often the LAN router forwarding
            // everyone's queries) gets a truncated answer and retries over TCP, so it loses
            // nothing; the answer is never larger than the query. A source outside `allow` is
            // dropped: it would only be refused anyway.
            if !table.allowed(req.src) {
                return Outcome::Drop;
            }
            bump(&self.stats.slipped);
            return Outcome::Reply(slip_reply(b));
        }
        if !table.allowed(req.src) {
            bump(&self.stats.refused);
            return Outcome::Reply(error_reply(b, ResponseCode::Refused));
        }
        if let Some(reply) = self.fast(req, &table) {
            return Outcome::Reply(reply);
        }
        self.general(req, &table)
    }

    /// Intercepted names and cache hits for the common query shape, written without a full
    /// parse. `None`: not sure, take the general path.
    pub fn fast(&self, req: &Request, table: &Table) -> Option<Vec<u8>> {
        let b = req.bytes;
        if b.len() < HEADER_LEN || b[2] & 0xFA != 0 {
            // QR, opcode and TC must all be zero.
            return None;
        }
        if wire::u16_at(b, 4)? != 1 || wire::u16_at(b, 6)? != 0 || wire::u16_at(b, 8)? != 0 {
            return None;
        }
        let q = wire::question(b, true)?;
        if q.qclass != CLASS_IN || q.qtype == wire::TYPE_OPT || q.qtype >= 249 {
            return None;
        }
        let (payload, dnssec_ok) = wire::simple_opt(b, &q)?;
        let intercepted = NAME.with_borrow_mut(|name| {
            wire::dotted_lower(q.name_wire(b), name);
            table.intercepts(name)
        });
        if intercepted {
            bump(&self.stats.intercepted);
            self.stats.qtype(q.qtype);
            let set = self.advertised.load();
            let adv = advertise_for(&set, table, req.local);
            return Some(intercept_answer(
                b,
                &q,
                payload.is_some(),
                dnssec_ok,
                &adv,
                table.ttl,
            ));
        }
        if table.cache {
            let key = cache::key(b, &q, dnssec_ok);
            let hit = self.cache.get(&key, b, &q)?;
            bump(&self.stats.forwarded);
            bump(&self.stats.cache_hits);
            self.stats.qtype(q.qtype);
            return Some(fit(hit, limit_for(req.transport, payload)));
        }
        None
    }

    /// Every query, parsed in full with hickory-proto.
    pub fn general(&self, req: &Request, table: &Table) -> Outcome {
        let b = req.bytes;
        let msg = match Message::from_vec(b) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(src = %req.src, "malformed DNS query: {e}");
                bump(&self.stats.malformed);
                return Outcome::Reply(header_reply(b, ResponseCode::FormErr));
            }
        };
        if msg.metadata.message_type != MessageType::Query {
            bump(&self.stats.malformed);
            return Outcome::Drop;
        }
        if msg.metadata.op_code != OpCode::Query {
            return Outcome::Reply(header_reply(b, ResponseCode::NotImp));
        }
        // Only plain-label questions: what every resolver sends, and what the raw forwarding
        // and caching code can check upstream answers against.
        let q = match (msg.queries.len(), wire::question(b, false)) {
            (1, Some(q)) => q,
            _ => {
                bump(&self.stats.malformed);
                return Outcome::Reply(header_reply(b, ResponseCode::FormErr));
            }
        };
        self.stats.qtype(q.qtype);
        if msg.edns.as_ref().is_some_and(|e| e.version() > 0) {
            // RFC 6891 6.1.3: we speak EDNS version 0 only.
            return Outcome::Reply(respond(&msg, ResponseCode::BADVERS, false, vec![]));
        }
        let dnssec_ok = msg.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let payload = msg.edns.as_ref().map(|e| e.max_payload());
        let intercepted = q.qclass == CLASS_IN
            && NAME.with_borrow_mut(|name| {
                wire::dotted_lower(q.name_wire(b), name);
                table.intercepts(name)
            });
        let name = msg.queries[0].name().clone();
        if q.qtype == TYPE_ANY {
            // RFC 8482: one synthesized HINFO instead of everything we know.
            if intercepted {
                bump(&self.stats.intercepted);
            }
            let hinfo = HINFO::new("RFC8482".into(), String::new());
            let rr = Record::from_rdata(name, table.ttl, RData::HINFO(hinfo));
            return Outcome::Reply(respond(&msg, ResponseCode::NoError, intercepted, vec![rr]));
        }
        if intercepted {
            bump(&self.stats.intercepted);
            let set = self.advertised.load();
            let adv = advertise_for(&set, table, req.local);
            let answers: Vec<Record> = match q.qtype {
                TYPE_A => adv
                    .v4
                    .iter()
                    .map(|ip| Record::from_rdata(name.clone(), table.ttl, RData::A(A(*ip))))
                    .collect(),
                TYPE_AAAA => adv
                    .v6
                    .iter()
                    .map(|ip| Record::from_rdata(name.clone(), table.ttl, RData::AAAA(AAAA(*ip))))
                    .collect(),
                _ => vec![],
            };
            return Outcome::Reply(respond(&msg, ResponseCode::NoError, true, answers));
        }
        let cache_key = table.cache.then(|| cache::key(b, &q, dnssec_ok));
        if let Some(key) = &cache_key {
            if let Some(hit) = self.cache.get(key, b, &q) {
                bump(&self.stats.forwarded);
                bump(&self.stats.cache_hits);
                return Outcome::Reply(fit(hit, limit_for(req.transport, payload)));
            }
        }
        bump(&self.stats.forwarded);
        Outcome::Forward(Forward {
            query: b.to_vec(),
            question_end: q.end,
            cache_key,
            udp_limit: match req.transport {
                Transport::Udp => Some(wire::udp_limit(payload)),
                Transport::Tcp => None,
            },
            local: req.local,
        })
    }
}

fn limit_for(transport: Transport, payload: Option<u16>) -> Option<usize> {
    match transport {
        Transport::Udp => Some(wire::udp_limit(payload)),
        Transport::Tcp => None,
    }
}

/// A response as it may be sent: whole if it fits the client's UDP limit, else truncated.
pub fn fit(response: Vec<u8>, udp_limit: Option<usize>) -> Vec<u8> {
    match udp_limit {
        Some(limit) if response.len() > limit => wire::truncated(&response).unwrap_or(response),
        _ => response,
    }
}

/// The templated answer for an intercepted name: byte for byte what [`respond`] encodes.
fn intercept_answer(
    b: &[u8],
    q: &wire::Question,
    edns: bool,
    dnssec_ok: bool,
    adv: &Advertise,
    ttl: u32,
) -> Vec<u8> {
    let count = match q.qtype {
        TYPE_A => adv.v4.len(),
        TYPE_AAAA => adv.v6.len(),
        _ => 0,
    };
    let mut out = Vec::with_capacity(q.end + count * 28 + 11);
    out.extend_from_slice(&b[..2]);
    // QR, AA, RD copied; RA, CD copied.
    out.push(0x84 | (b[2] & 0x01));
    out.push(0x80 | (b[3] & 0x10));
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(count as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, u8::from(edns)]);
    out.extend_from_slice(&b[HEADER_LEN..q.end]);
    let mut rr = |rdata: &[u8]| {
        out.extend_from_slice(&[0xC0, 0x0C]);
        out.extend_from_slice(&q.qtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(rdata);
    };
    match q.qtype {
        TYPE_A => adv.v4.iter().for_each(|ip| rr(&ip.octets())),
        TYPE_AAAA => adv.v6.iter().for_each(|ip| rr(&ip.octets())),
        _ => {}
    }
    if edns {
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
        out.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
    out
}

/// A locally built response to a parsed query: the question echoed, RD and CD copied, RA set,
/// EDNS answered when the query had it.
fn respond(
    msg: &Message,
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
) -> Vec<u8> {
    let mut r = Message::response(msg.metadata.id, msg.metadata.op_code);
    r.metadata = Metadata::response_from_request(&msg.metadata);
    r.metadata.authoritative = authoritative;
    r.metadata.recursion_available = true;
    r.metadata.response_code = rcode;
    r.add_queries(msg.queries.iter().cloned());
    r.add_answers(answers);
    if let Some(e) = &msg.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        edns.set_dnssec_ok(e.flags().dnssec_ok);
        r.set_edns(edns);
    }
    let mut raw = msg.metadata.id.to_be_bytes().to_vec();
    raw.extend_from_slice(&[0; 10]);
    r.to_vec()
        .unwrap_or_else(|_| header_reply(&raw, ResponseCode::ServFail))
}

fn header_bytes(b: &[u8], rcode: ResponseCode, qdcount: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&b[..2]);
    // QR, the query's opcode and RD; RA, the query's CD, the RCODE.
    out.push(0x80 | (b[2] & 0x79));
    out.push(0x80 | (b[3] & 0x10) | (u16::from(rcode) & 0x0F) as u8);
    out.extend_from_slice(&qdcount.to_be_bytes());
    out.extend_from_slice(&[0; 6]);
    out
}

/// An error response with the header only (for messages whose question cannot be trusted).
pub fn header_reply(b: &[u8], rcode: ResponseCode) -> Vec<u8> {
    header_bytes(b, rcode, 0)
}

/// An error response echoing the question when there is exactly one plain one.
pub fn error_reply(b: &[u8], rcode: ResponseCode) -> Vec<u8> {
    match wire::question(b, false) {
        Some(q) if wire::u16_at(b, 4) == Some(1) => {
            let mut out = header_bytes(b, rcode, 1);
            out.extend_from_slice(&b[HEADER_LEN..q.end]);
            out
        }
        _ => header_bytes(b, rcode, 0),
    }
}

/// A rate-limited UDP query's answer: header with TC set and the question only, so the client
/// asks again over TCP (RFC 7766). It is no longer than the query (no OPT, no records).
pub fn slip_reply(b: &[u8]) -> Vec<u8> {
    let mut out = error_reply(b, ResponseCode::NoError);
    out[2] |= 0x02;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use hickory_proto::rr::RecordType;

    /// A slip is the question with TC set and nothing else: never larger than the query,
    /// even one carrying EDNS.
    #[test]
    fn slip_is_header_and_question_only() {
        let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        q.extend_from_slice(b"\x08registry\x06ollama\x02ai\x00\x00\x01\x00\x01");
        // OPT: root name, type 41, payload 1232, no flags, no data.
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        let r = slip_reply(&q);
        assert!(r.len() < q.len());
        assert_eq!(&r[..2], &q[..2]);
        assert_eq!(r[2] & 0x82, 0x82, "QR and TC");
        assert_eq!(&r[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&r[12..], &q[12..q.len() - 11]);
    }

    fn engine(extra: &str) -> Engine {
        let config =
            Config::parse(&format!("[dns]\nintercept = [\"*.wild.test\"]\n{extra}")).unwrap();
        let adv = Advertise::from_addrs(&[
            "192.0.2.10".parse().unwrap(),
            "2001:db8::10".parse().unwrap(),
        ]);
        Engine::new(Table::with_advertise(&config, Some(adv)), Arc::default())
    }

    fn query(name: &str, qtype: RecordType, edns: Option<bool>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(hickory_proto::op::Query::query(
            name.parse().unwrap(),
            qtype,
        ));
        if let Some(dnssec_ok) = edns {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            e.set_dnssec_ok(dnssec_ok);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn req(bytes: &[u8]) -> Request<'_> {
        Request {
            bytes,
            src: "127.0.0.1".parse().unwrap(),
            local: "127.0.0.1:53".parse().unwrap(),
            transport: Transport::Udp,
        }
    }

    #[test]
    fn fast_and_general_paths_agree_byte_for_byte() {
        let e = engine("");
        let t = e.table();
        for name in [
            "registry.ollama.ai.",
            "REGISTRY.Ollama.AI.",
            "a.b.wild.test.",
        ] {
            for qtype in [
                RecordType::A,
                RecordType::AAAA,
                RecordType::HTTPS,
                RecordType::MX,
                RecordType::SVCB,
            ] {
                for edns in [None, Some(false), Some(true)] {
                    let q = query(name, qtype, edns);
                    let fast = e.fast(&req(&q), &t).expect("fast path answers");
                    let Outcome::Reply(general) = e.general(&req(&q), &t) else {
                        panic!("general path must answer {name} {qtype}")
                    };
                    assert_eq!(fast, general, "{name} {qtype} {edns:?}");
                    let m = Message::from_vec(&fast).unwrap();
                    assert!(m.metadata.authoritative && m.metadata.recursion_available);
                    let want = match qtype {
                        RecordType::A | RecordType::AAAA => 1,
                        _ => 0,
                    };
                    assert_eq!(m.answers.len(), want);
                    assert_eq!(m.edns.is_some(), edns.is_some());
                }
            }
        }
    }

    #[test]
    fn cache_hits_agree_and_fit_the_client() {
        let e = engine("");
        let t = e.table();
        let q = query("Example.ORG.", RecordType::TXT, Some(false));
        let Outcome::Forward(job) = e.general(&req(&q), &t) else {
            panic!("a miss is forwarded")
        };
        // What upstream might say: a TXT big enough to need truncation for a 512-byte client.
        let mut m = Message::from_vec(&q).unwrap();
        m.metadata.message_type = MessageType::Response;
        let txt = hickory_proto::rr::rdata::TXT::new(vec!["y".repeat(250); 4]);
        m.add_answer(Record::from_rdata(
            "example.org.".parse().unwrap(),
            300,
            RData::TXT(txt),
        ));
        e.cache.insert(job.cache_key.unwrap(), &m.to_vec().unwrap());
        for edns in [Some(false), None] {
            let q = query("example.org.", RecordType::TXT, edns);
            let fast = e.fast(&req(&q), &t).expect("fast path serves the hit");
            let Outcome::Reply(general) = e.general(&req(&q), &t) else {
                panic!()
            };
            assert_eq!(fast, general);
            assert_eq!(&fast[..2], &q[..2]);
            let hit = Message::from_vec(&fast).unwrap();
            assert_eq!(
                hit.metadata.truncation,
                edns.is_none(),
                "512 bytes without EDNS"
            );
        }
    }

    #[test]
    fn other_names_are_forwarded_and_any_is_minimal() {
        let e = engine("");
        let q = query("example.org.", RecordType::A, None);
        assert!(matches!(e.handle(&req(&q)), Outcome::Forward(_)));
        let q = query("example.org.", RecordType::ANY, None);
        let Outcome::Reply(r) = e.handle(&req(&q)) else {
            panic!()
        };
        let m = Message::from_vec(&r).unwrap();
        assert_eq!(m.answers[0].record_type(), RecordType::HINFO);
    }

    #[test]
    fn refuses_outsiders_and_survives_garbage() {
        let e = engine("allow = [\"10.0.0.0/8\"]\n");
        let q = query("registry.ollama.ai.", RecordType::A, None);
        let Outcome::Reply(r) = e.handle(&req(&q)) else {
            panic!()
        };
        assert_eq!(
            Message::from_vec(&r).unwrap().metadata.response_code,
            ResponseCode::Refused
        );
        let e = engine("");
        for junk in [
            &b""[..],
            b"\x00",
            &[0xff; 12],
            &[0u8; 300],
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c",
        ] {
            let _ = e.handle(&req(junk));
        }
    }
}
