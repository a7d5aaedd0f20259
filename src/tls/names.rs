//! Which names the cache answers HTTPS for: every registry host clients ask for
//! (`[upstream.registries]`), every `[dns] intercept` pattern, and the cache's own name or
//! address (`[http] public_url`, `[dns] advertise`). The same set decides the leaf certificates
//! and, when a CA is created, its X.509 name constraints — so the two can never disagree about
//! what "intercepted" means.
//!
//! The constraints also permit [`HUB_SUBTREES`] (Hugging Face: `hf.co`, `huggingface.co` and
//! everything below them, which covers their CDNs), whether or not they are intercepted yet.
//! Permitting a name is not intercepting it: DNS and the leaves still follow the configuration.
//! Rotating the CA is an every-client event, so it is done once for the names the cache is
//! going to serve, not again each time one of them starts being intercepted.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::config::Config;

/// The names to hold leaf certificates for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameSet {
    /// Exact host names and `*.suffix` patterns, lower case, no trailing dot.
    pub dns: BTreeSet<String>,
    /// The cache's own addresses (clients that connect by IP send no SNI).
    pub ips: BTreeSet<IpAddr>,
    /// DNS subtrees the CA's constraints permit beyond `dns` (no leaves are issued for them).
    pub reserved: BTreeSet<String>,
}

/// Name-constraint subtrees every new CA permits: Hugging Face's API and short-link domain
/// (`hf.co`, also `us.aws.cdn.hf.co`, `cas-bridge.xethub.hf.co`, `cdn-lfs.hf.co`) and its
/// website and hub (`huggingface.co`, also `cdn-lfs.huggingface.co`). An RFC 5280 dNSName
/// subtree covers the name and every name below it, so two entries cover all of these.
pub const HUB_SUBTREES: [&str; 2] = ["hf.co", "huggingface.co"];

impl NameSet {
    pub fn from_config(config: &Config) -> NameSet {
        let mut set = NameSet::default();
        for host in config.upstream.registries.keys() {
            set.dns.insert(normalise(host.as_str()));
        }
        for pattern in &config.dns.intercept {
            set.dns.insert(normalise(&pattern.0));
        }
        // The Hub front answers huggingface.co (transparent mode): it needs a leaf.
        if config.huggingface.enabled {
            set.dns.insert(crate::hub::HOST.to_string());
        }
        if config.http.public_url.is_set() {
            if let Ok(uri) = config.http.public_url.0.parse::<http::Uri>() {
                if let Some(host) = uri.host() {
                    let bare = host.trim_start_matches('[').trim_end_matches(']');
                    match bare.parse::<IpAddr>() {
                        Ok(ip) => {
                            set.ips.insert(ip);
                        }
                        Err(_) => {
                            set.dns.insert(normalise(bare));
                        }
                    }
                }
            }
        }
        set.ips.extend(config.dns.advertise.iter().copied());
        set.reserved = HUB_SUBTREES.iter().map(|s| s.to_string()).collect();
        set
    }

    /// The subtree a DNS name constraint needs for `name`: a pattern's suffix, else the name
    /// itself (an RFC 5280 dNSName constraint covers the name and everything below it); plus
    /// the reserved subtrees.
    pub fn constraint_subtrees(&self) -> BTreeSet<String> {
        self.dns
            .iter()
            .map(|n| n.strip_prefix("*.").unwrap_or(n).to_string())
            .chain(self.reserved.iter().cloned())
            .collect()
    }

    /// Names in `self` that `other` lacks (for log lines on reload).
    pub fn added_since(&self, other: &NameSet) -> Vec<String> {
        let mut added: Vec<String> = self.dns.difference(&other.dns).cloned().collect();
        added.extend(self.ips.difference(&other.ips).map(|ip| ip.to_string()));
        added
    }
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The pattern in `names` that covers `sni` with a certificate issued just for it: the exact
/// name, else the closest `*.suffix` above it. Returns (pattern, whether the leaf must be made
/// for `sni` itself because a TLS wildcard only spans one label).
pub fn covering_pattern<'a>(names: &'a BTreeSet<String>, sni: &str) -> Option<(&'a str, bool)> {
    if let Some(n) = names.get(sni) {
        return Some((n.as_str(), false));
    }
    // Walk up the labels: a.b.example.com tries *.b.example.com, *.example.com, *.com.
    let mut rest = sni;
    let mut depth = 0;
    while let Some((_, parent)) = rest.split_once('.') {
        depth += 1;
        let wildcard = format!("*.{parent}");
        if let Some(n) = names.get(&wildcard) {
            return Some((n.as_str(), depth > 1));
        }
        rest = parent;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_config_collects_every_source() {
        let c = Config::parse(
            "[dns]\nintercept = [\"hf.co\", \"*.R2.cloudflarestorage.com\"]\nadvertise = [\"10.0.0.5\"]\n[http]\npublic_url = \"http://Cache.lan:8080\"\n[huggingface]\nenabled = false\n",
        )
        .unwrap();
        let n = NameSet::from_config(&c);
        let dns: Vec<&str> = n.dns.iter().map(String::as_str).collect();
        assert_eq!(
            dns,
            [
                "*.r2.cloudflarestorage.com",
                "cache.lan",
                "hf.co",
                "registry.ollama.ai"
            ]
        );
        assert_eq!(n.ips.len(), 1);
        let subtrees = n.constraint_subtrees();
        assert!(subtrees.contains("r2.cloudflarestorage.com"));
        // Permitted for the Hugging Face issue, but neither intercepted nor given a leaf.
        assert!(subtrees.contains("huggingface.co") && subtrees.contains("hf.co"));
        assert!(!n.dns.contains("huggingface.co"));
        // With the Hub front on (the default), huggingface.co gets a leaf.
        assert!(NameSet::from_config(&Config::default())
            .dns
            .contains("huggingface.co"));
        let ip = Config::parse("[http]\npublic_url = \"https://[fd00::1]\"\n").unwrap();
        assert!(NameSet::from_config(&ip)
            .ips
            .contains(&"fd00::1".parse::<IpAddr>().unwrap()));
    }

    #[test]
    fn covering() {
        let names: BTreeSet<String> = ["hf.co", "*.r2.example"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(covering_pattern(&names, "hf.co"), Some(("hf.co", false)));
        assert_eq!(covering_pattern(&names, "x.hf.co"), None);
        assert_eq!(
            covering_pattern(&names, "a.r2.example"),
            Some(("*.r2.example", false))
        );
        assert_eq!(
            covering_pattern(&names, "a.b.r2.example"),
            Some(("*.r2.example", true))
        );
        assert_eq!(covering_pattern(&names, "r2.example"), None);
        assert_eq!(covering_pattern(&names, "evil.com"), None);
    }
}
