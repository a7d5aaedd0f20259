//! The base URL clients are told to use (in the scripts, the web UI's commands, `/api/*` URLs).
//! In order: `[http] public_url`; `http://<first [dns] advertise address>`; the request's own
//! `Host` header, but only when it is a well-formed host name or IP literal with an optional
//! port (a header is client input and must never be reflected unchecked into a script); else
//! the local address the connection arrived on.

use http::HeaderMap;
use std::net::{IpAddr, SocketAddr};

use crate::config::Config;
use crate::store::names::valid_host;

pub fn public_url(config: &Config, headers: &HeaderMap, local: SocketAddr, tls: bool) -> String {
    if config.http.public_url.is_set() {
        return config.http.public_url.0.clone();
    }
    if let Some(ip) = config.dns.advertise.first() {
        return format!("http://{}", host_of_ip(*ip));
    }
    let scheme = if tls { "https" } else { "http" };
    if let Some(host) = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(validated_host)
    {
        return format!("{scheme}://{host}");
    }
    format!("{scheme}://{}", SocketAddr::new(local.ip(), local.port()))
}

fn host_of_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// `name[:port]`, `a.b.c.d[:port]` or `[v6][:port]`, lower-cased; anything else is refused.
pub fn validated_host(h: &str) -> Option<String> {
    if let Some(rest) = h.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        let ip: std::net::Ipv6Addr = addr.parse().ok()?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok());
        return port_ok.then(|| format!("[{ip}]{after}"));
    }
    if let Some((_, p)) = h.rsplit_once(':') {
        p.parse::<u16>().ok()?;
    }
    valid_host(h).then(|| h.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_validation() {
        assert_eq!(
            validated_host("Cache.LAN:8080").as_deref(),
            Some("cache.lan:8080")
        );
        assert_eq!(validated_host("[::1]:80").as_deref(), Some("[::1]:80"));
        assert_eq!(validated_host("10.0.0.1").as_deref(), Some("10.0.0.1"));
        for bad in [
            "evil.com/x",
            "a b",
            "<script>",
            "x:99999",
            "[::1",
            "'$(id)'",
            "",
        ] {
            assert_eq!(validated_host(bad), None, "{bad}");
        }
    }
}
