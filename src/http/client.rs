//! Who the client is. The socket's peer address, always, except when that peer is one of the
//! configured `[http] trusted_proxies`: then the right-most `X-Forwarded-For` entry that is not
//! itself a trusted proxy (entries further left are whatever the client chose to send).

use http::HeaderMap;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

pub fn client_addr(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(&ip));
    if !is_trusted(peer.ip()) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let Ok(s) = v.to_str() else { return peer };
        for part in s.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip),
                // A hop we cannot read: stop believing anything left of it.
                Err(_) => hops.clear(),
            }
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(*ip))
        .map(|ip| SocketAddr::new(ip, 0))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6, 10.0.0.7".parse().unwrap());
        let peer: SocketAddr = "192.168.1.2:5000".parse().unwrap();
        assert_eq!(client_addr(peer, &h, &[]), peer);
        let trusted: Vec<IpNet> = vec!["192.168.1.2/32".parse().unwrap()];
        assert_eq!(
            client_addr(peer, &h, &trusted),
            "10.0.0.7:0".parse().unwrap()
        );
    }
}
