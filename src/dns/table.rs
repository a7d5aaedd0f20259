//! The answering policy derived from the configuration in force: which names are intercepted,
//! what they resolve to, who may ask, and how forwarding behaves. Built once per (re)load and
//! swapped atomically, so queries never see half a reload and never take a lock for it.

use ipnet::IpNet;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::advertise::{self, Advertise};
use crate::config::Config;

#[derive(Debug, Clone)]
pub struct Table {
    exact: HashSet<String>,
    /// `*.suffix` patterns stored as ".suffix".
    suffixes: Vec<String>,
    /// `None`: answer with the address the query arrived on (no configured or default-route
    /// address is known).
    pub advertise: Option<Advertise>,
    pub allow: Vec<IpNet>,
    pub ttl: u32,
    pub rate_limit: u32,
    pub cache: bool,
    pub resolvers: Vec<SocketAddr>,
    pub upstream_timeout: Duration,
    pub tcp_max_connections: usize,
    pub tcp_idle_timeout: Duration,
}

impl Table {
    /// The table for `config`; an empty `advertise` means the default-route interface's
    /// addresses, read now.
    pub fn from_config(config: &Config) -> Table {
        let advertise = if config.dns.advertise.is_empty() {
            advertise::default_route_addresses()
        } else {
            Some(Advertise::from_addrs(&config.dns.advertise))
        };
        Table::with_advertise(config, advertise)
    }

    /// As [`Table::from_config`], with the advertise set given (tests, fuzzing).
    pub fn with_advertise(config: &Config, advertise: Option<Advertise>) -> Table {
        let mut exact = HashSet::new();
        let mut suffixes = Vec::new();
        let registries = config.upstream.registries.keys().map(|h| h.as_str());
        let intercepts = config.dns.intercept.iter().map(|p| p.0.as_str());
        // The Hub front answers huggingface.co itself (transparent mode).
        let hub = config
            .huggingface
            .enabled
            .then_some(crate::hub::HOST)
            .into_iter();
        for name in registries.chain(intercepts).chain(hub) {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(suffix) => suffixes.push(format!(".{suffix}")),
                None => {
                    exact.insert(name);
                }
            }
        }
        Table {
            exact,
            suffixes,
            advertise,
            allow: config.dns.allow.clone(),
            ttl: u32::try_from(config.dns.ttl.0.as_secs()).unwrap_or(u32::MAX),
            rate_limit: config.dns.rate_limit,
            cache: config.dns.cache,
            resolvers: config.upstream.resolvers.clone(),
            upstream_timeout: config.dns.upstream_timeout.0,
            tcp_max_connections: config.dns.tcp_max_connections,
            tcp_idle_timeout: config.dns.tcp_idle_timeout.0,
        }
    }

    /// Whether a lower-case name without trailing dot is answered with the cache.
    pub fn intercepts(&self, name: &str) -> bool {
        self.exact.contains(name)
            || self
                .suffixes
                .iter()
                .any(|s| name.len() > s.len() && name.ends_with(s.as_str()))
    }

    pub fn allowed(&self, src: IpAddr) -> bool {
        let src = canonical(src);
        self.allow.iter().any(|net| net.contains(&src))
    }

    /// The addresses to answer with for a query that arrived on `local`.
    pub fn advertise_for(&self, local: SocketAddr) -> std::borrow::Cow<'_, Advertise> {
        match &self.advertise {
            Some(a) => std::borrow::Cow::Borrowed(a),
            None if local.ip().is_unspecified() => std::borrow::Cow::Owned(Advertise::default()),
            None => std::borrow::Cow::Owned(Advertise::from_addrs(&[local.ip()])),
        }
    }
}

/// IPv4-mapped IPv6 sources (from dual-stack sockets) are judged as the IPv4 address they are.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intercepts_registries_and_patterns() {
        let config = Config::parse(
            "[dns]\nintercept = [\"hf.co\", \"*.R2.example\"]\nallow = [\"10.0.0.0/8\"]\n",
        )
        .unwrap();
        let t = Table::with_advertise(&config, None);
        assert!(t.intercepts("registry.ollama.ai"));
        assert!(t.intercepts("hf.co") && !t.intercepts("x.hf.co"));
        assert!(t.intercepts("a.r2.example") && !t.intercepts("r2.example"));
        assert!(!t.intercepts("xr2.example"));
        assert!(t.allowed("10.1.2.3".parse().unwrap()));
        assert!(t.allowed("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!t.allowed("127.0.0.1".parse().unwrap()));
    }

    /// hf.co is a default registry, so intercepted; huggingface.co is intercepted while the
    /// Hub front (`[huggingface] enabled`) is on; their CDNs never are.
    #[test]
    fn defaults_intercept_hf_co_and_huggingface_co() {
        let t = Table::with_advertise(&Config::default(), None);
        assert!(t.intercepts("registry.ollama.ai") && t.intercepts("hf.co"));
        assert!(t.intercepts("huggingface.co") && !t.intercepts("us.aws.cdn.hf.co"));
        let off = Config::parse("[huggingface]\nenabled = false\n").unwrap();
        assert!(!Table::with_advertise(&off, None).intercepts("huggingface.co"));
    }
}
