//! Relaying a query to the configured upstream resolvers. The client's bytes go upstream as
//! they are (under a fresh random ID, from a fresh random port) and the answer comes back as it
//! is with only the ID restored, so flags, EDNS and DNSSEC records survive untouched. A
//! truncated UDP answer is fetched again over TCP when the client is on TCP (a UDP client gets
//! the truncated answer and retries over TCP itself). Each resolver gets `upstream_timeout`;
//! refusals and SERVFAILs fail over to the next; when nobody answers the client gets SERVFAIL.

use anyhow::{bail, Context, Result};
use hickory_proto::op::ResponseCode;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::answer::{error_reply, fit, Engine, Forward, MAX_IN_FLIGHT};
use super::stats::bump;
use super::wire;

/// Resolves `job` and returns the bytes to send to the client.
pub async fn resolve(engine: &Engine, job: Forward) -> Vec<u8> {
    if engine.in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
        engine.in_flight.fetch_sub(1, Ordering::Relaxed);
        bump(&engine.stats.failed);
        return error_reply(&job.query, ResponseCode::ServFail);
    }
    let reply = resolve_upstream(engine, &job).await;
    engine.in_flight.fetch_sub(1, Ordering::Relaxed);
    reply
}

/// Whether `resolver` is this very server (a configuration mistake that would loop).
fn is_self(resolver: SocketAddr, local: SocketAddr) -> bool {
    resolver == local
        || (local.ip().is_unspecified()
            && resolver.port() == local.port()
            && resolver.ip().is_loopback())
}

async fn resolve_upstream(engine: &Engine, job: &Forward) -> Vec<u8> {
    let table = engine.table();
    let want_full = job.udp_limit.is_none();
    let mut fallback: Option<Vec<u8>> = None;
    for resolver in &table.resolvers {
        if is_self(*resolver, job.local) {
            tracing::warn!("upstream resolver {resolver} is this server itself; skipped");
            continue;
        }
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(table.upstream_timeout, exchange(*resolver, job, want_full)).await;
        match outcome {
            Ok(Ok(response)) => {
                engine.stats.upstream_latency(started.elapsed());
                let rcode = response[3] & 0x0F;
                if rcode == u16::from(ResponseCode::ServFail) as u8
                    || rcode == u16::from(ResponseCode::Refused) as u8
                {
                    fallback = Some(response);
                    continue;
                }
                if let Some(key) = job.cache_key.clone() {
                    engine.cache.insert(key, &response);
                }
                return finish(response, job);
            }
            Ok(Err(e)) => tracing::debug!("upstream resolver {resolver}: {e:#}"),
            Err(_) => tracing::debug!("upstream resolver {resolver}: no answer in time"),
        }
    }
    bump(&engine.stats.failed);
    match fallback {
        Some(response) => finish(response, job),
        None => error_reply(&job.query, ResponseCode::ServFail),
    }
}

fn finish(mut response: Vec<u8>, job: &Forward) -> Vec<u8> {
    response[..2].copy_from_slice(&job.query[..2]);
    fit(response, job.udp_limit)
}

fn random_id() -> u16 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed)) as u16
}

/// Whether `response` answers `query` (same ID, a response, the same question).
fn answers(response: &[u8], query: &[u8], question_end: usize) -> bool {
    response.len() >= question_end
        && response[..2] == query[..2]
        && response[2] & 0x80 != 0
        && wire::u16_at(response, 4) == Some(1)
        && response[wire::HEADER_LEN..question_end]
            .eq_ignore_ascii_case(&query[wire::HEADER_LEN..question_end])
}

async fn exchange(resolver: SocketAddr, job: &Forward, want_full: bool) -> Result<Vec<u8>> {
    let mut query = job.query.clone();
    query[..2].copy_from_slice(&random_id().to_be_bytes());
    let bind: SocketAddr = if resolver.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind).await?;
    // Connected: the kernel drops datagrams from anyone else, and an ICMP port unreachable
    // fails the receive at once instead of waiting out the timeout.
    sock.connect(resolver).await?;
    sock.send(&query).await?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = sock.recv(&mut buf).await.context("receiving")?;
        let response = &buf[..n];
        if !answers(response, &query, job.question_end) {
            continue;
        }
        if response[2] & 0x02 != 0 && want_full {
            return exchange_tcp(resolver, &query, job.question_end).await;
        }
        return Ok(response.to_vec());
    }
}

async fn exchange_tcp(resolver: SocketAddr, query: &[u8], question_end: usize) -> Result<Vec<u8>> {
    let mut stream = TcpStream::connect(resolver).await?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await? as usize;
    let mut response = vec![0u8; len];
    stream.read_exact(&mut response).await?;
    if !answers(&response, query, question_end) {
        bail!("TCP answer does not match the query");
    }
    Ok(response)
}
