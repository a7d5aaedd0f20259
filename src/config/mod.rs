//! The configuration contract: `/etc/lancached/lancached.toml`, every key optional.
//!
//! Parsing is strict on purpose: an unknown key is almost always a typo that would otherwise
//! silently leave a default in force (say, an open DNS resolver), so unknown keys, bad values and
//! unreadable files all fail start-up (and `lancachectl reload`) with a message naming the file,
//! the key and the line. Values validate while they deserialise (see `units` and the newtypes
//! below), which is what lets the TOML parser point at the offending line for every kind of error.

pub mod cluster;
pub mod units;

use anyhow::{Context, Result};
use indexmap::IndexMap;
use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub use cluster::ClusterConfig;
pub use units::{ByteSize, HumanDuration, Rate};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/lancached/lancached.toml";

/// The quick-start configuration: unprivileged ports on loopback, everything under the current
/// directory. `lancached --quickstart` runs on it; the cache directory is chosen at start.
pub const QUICKSTART_TOML: &str = include_str!("../../packaging/quickstart.toml");

/// The packaged default, shipped as `/etc/lancached/lancached.toml`.
pub const PACKAGED_TOML: &str = include_str!("../../packaging/lancached.toml");

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub cache: CacheConfig,
    pub upstream: UpstreamConfig,
    pub dns: DnsConfig,
    pub http: HttpConfig,
    pub tls: TlsConfig,
    pub control: ControlConfig,
    pub log: LogConfig,
    pub huggingface: HuggingfaceConfig,
    /// Several nodes over one object store; absent = standalone.
    pub cluster: ClusterConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// An Ollama models directory (`blobs/`, `manifests/`); the daemon's own work lives in
    /// `.lancached/` beside them, out of reach of Ollama's start-up clean-up.
    pub dir: PathBuf,
    /// Evict least recently used models above this.
    pub max_size: ByteSize,
    /// ... or when the disk has less free than this.
    pub min_free: ByteSize,
    /// Whether models found in the directory (not fetched by the daemon) may be evicted.
    pub evict_local: bool,
    /// At most this many blobs are filled from upstream at once.
    pub max_fills: usize,
    /// Parallel upstream connections per fill.
    pub fill_connections: usize,
    /// Upstream is fetched in slices of this size.
    pub slice_size: ByteSize,
    /// An upstream connection that delivers nothing for this long is abandoned and retried.
    pub stall_timeout: HumanDuration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: PathBuf::from("/var/cache/lancached"),
            max_size: ByteSize::gib(500),
            min_free: ByteSize::gib(10),
            evict_local: false,
            max_fills: 8,
            fill_connections: 4,
            slice_size: ByteSize::mib(32),
            stall_timeout: HumanDuration::secs(30),
        }
    }
}

impl CacheConfig {
    /// The daemon's private area inside the cache directory (same filesystem, so a verified
    /// blob is published by an atomic rename).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(".lancached")
    }
}

/// `[huggingface]`: the Hugging Face Hub through the cache (`HF_ENDPOINT=http://CACHE/hf`, or
/// transparently for `huggingface.co`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HuggingfaceConfig {
    /// The Hub's base URL, fetched from (tests point it at a stand-in).
    pub upstream: BaseUrl,
    pub enabled: bool,
    /// The hub cache (`huggingface_hub`'s layout); empty means `<cache.dir>/huggingface`.
    pub dir: PathBuf,
    /// A branch or tag's commit is revalidated with upstream after this long.
    pub revision_ttl: HumanDuration,
    /// A token upstream accepted for a gated or private repo is trusted for this long.
    pub auth_ttl: HumanDuration,
}

impl Default for HuggingfaceConfig {
    fn default() -> Self {
        HuggingfaceConfig {
            upstream: BaseUrl("https://huggingface.co".into()),
            enabled: true,
            dir: PathBuf::new(),
            revision_ttl: HumanDuration::secs(600),
            auth_ttl: HumanDuration::secs(300),
        }
    }
}

impl HuggingfaceConfig {
    /// The hub cache directory in force.
    pub fn dir(&self, cache: &CacheConfig) -> PathBuf {
        if self.dir.as_os_str().is_empty() {
            cache.dir.join("huggingface")
        } else {
            self.dir.clone()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// DNS servers for forwarded queries and for resolving upstream registries.
    pub resolvers: Vec<SocketAddr>,
    /// Cached manifests (mutable tags) are revalidated with upstream after this long.
    pub manifest_ttl: HumanDuration,
    /// An extra root CA (PEM) trusted for upstream TLS; empty for none.
    pub ca_file: PathBuf,
    /// Host name clients ask for -> base URL the cache fetches from. Order matters: a request
    /// for any other host (the cache's own name) goes to the first one. Keys are normalised at
    /// load (lower case, no trailing dot), and two keys that normalise alike are refused.
    #[serde(deserialize_with = "registries")]
    pub registries: IndexMap<HostName, BaseUrl>,
    /// Another cache every upstream request is dialled to, keeping its own Host and SNI:
    /// `ADDR` (an IP address or host name: the URL's port, 443 or 80) or `ADDR:PORT` (PORT
    /// for https; http stays on the URL's port). Empty for none.
    pub parent: String,
    /// Cap on the upstream bytes of all fills together (`"200Mbit"`, `"25MB"`); 0 = none.
    pub max_rate: Rate,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        let mut registries = IndexMap::new();
        registries.insert(
            HostName("registry.ollama.ai".into()),
            BaseUrl("https://registry.ollama.ai".into()),
        );
        // Ollama pulls `hf.co/<user>/<repo>:<quant>` from Hugging Face with the same API.
        registries.insert(HostName("hf.co".into()), BaseUrl("https://hf.co".into()));
        UpstreamConfig {
            resolvers: vec!["1.1.1.1:53".parse().unwrap(), "9.9.9.9:53".parse().unwrap()],
            manifest_ttl: HumanDuration::secs(600),
            ca_file: PathBuf::new(),
            registries,
            parent: String::new(),
            max_rate: Rate(0),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Used only when not socket-activated; `[]` turns DNS off.
    pub listen: Vec<SocketAddr>,
    /// Addresses answered for intercepted names (default: the addresses of the interface that
    /// has the default route).
    pub advertise: Vec<IpAddr>,
    /// Sources allowed to query; everyone else gets REFUSED.
    pub allow: Vec<IpNet>,
    /// Extra names to answer with the cache: exact names or `*.suffix`.
    pub intercept: Vec<NamePattern>,
    /// TTL of intercepted answers.
    pub ttl: HumanDuration,
    /// Queries per second allowed from one client address (0 = unlimited).
    pub rate_limit: u32,
    /// Cache forwarded answers (honouring their TTLs).
    pub cache: bool,
    /// How long to wait for one upstream resolver before trying the next.
    pub upstream_timeout: HumanDuration,
    /// DNS-over-TCP connections open at once; further connections are closed at accept.
    pub tcp_max_connections: usize,
    /// A DNS-over-TCP connection with no complete query for this long is closed.
    pub tcp_idle_timeout: HumanDuration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: vec!["0.0.0.0:53".parse().unwrap()],
            advertise: vec![],
            allow: [
                "127.0.0.0/8",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "::1/128",
                "fc00::/7",
                "fe80::/10",
            ]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect(),
            intercept: vec![],
            ttl: HumanDuration::secs(60),
            rate_limit: 20_000,
            cache: true,
            upstream_timeout: HumanDuration::secs(2),
            tcp_max_connections: 512,
            tcp_idle_timeout: HumanDuration::secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Used only when not socket-activated; `[]` turns plain HTTP off.
    pub listen: Vec<SocketAddr>,
    /// Base URL clients reach the data plane at (default: `http://<advertise[0]>`).
    pub public_url: PublicUrl,
    /// Reverse proxies whose `X-Forwarded-For` is believed; nobody else's is.
    pub trusted_proxies: Vec<IpNet>,
    /// Who may read `/metrics`.
    pub metrics_allow: Vec<IpNet>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: vec!["0.0.0.0:80".parse().unwrap()],
            public_url: PublicUrl::default(),
            trusted_proxies: vec![],
            metrics_allow: DnsConfig::default().allow,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Used only when not socket-activated; `[]` turns HTTPS off.
    pub listen: Vec<SocketAddr>,
    /// The cache's own CA, created on first start.
    pub ca_dir: PathBuf,
    /// Constrain the CA (X.509 name constraints) to the intercepted names, so a leaked key can
    /// impersonate nothing else. Applies when the CA is created or rotated.
    pub name_constraints: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            listen: vec!["0.0.0.0:443".parse().unwrap()],
            ca_dir: PathBuf::from("/var/lib/lancached/ca"),
            name_constraints: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Used only when not socket-activated; an empty path turns the control socket off.
    pub socket: PathBuf,
    /// Members of this group may use `lancachectl` (root and the daemon's own user always may).
    pub group: String,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: PathBuf::from(lancache_protocol::DEFAULT_SOCKET),
            group: "lancache".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `RUST_LOG`-style filter; the `RUST_LOG` environment variable overrides it.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        // hickory logs every query at INFO: on a busy LAN that is most of the CPU (DESIGN.md).
        LogConfig {
            filter: "info,hickory_server=warn,hickory_proto=warn,hickory_resolver=warn".into(),
        }
    }
}

/// A DNS host name as written in `[upstream.registries]`: validated, lower-cased and without
/// its trailing dot (`"registry.ollama.ai."` is the same host as `"registry.ollama.ai"`; kept
/// as written it would never match a request's `Host`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct HostName(pub String);

impl HostName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for HostName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        validate_host_name(&s)
            .map(|()| HostName(s.strip_suffix('.').unwrap_or(&s).to_ascii_lowercase()))
            .map_err(de::Error::custom)
    }
}

/// `[upstream.registries]`, in file order. Two keys naming the same host once normalised
/// (`"hf.co"` and `"HF.co."`) are refused: silently keeping one would hide the other's URL.
fn registries<'de, D: Deserializer<'de>>(d: D) -> Result<IndexMap<HostName, BaseUrl>, D::Error> {
    struct Registries;
    impl<'de> de::Visitor<'de> for Registries {
        type Value = IndexMap<HostName, BaseUrl>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a table of host name = base URL")
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = IndexMap::new();
            while let Some((host, url)) = map.next_entry::<HostName, BaseUrl>()? {
                if out.contains_key(&host) {
                    return Err(de::Error::custom(format!(
                        "host {:?} is listed twice (keys are compared in lower case without a \
                         trailing dot)",
                        host.as_str()
                    )));
                }
                out.insert(host, url);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Registries)
}

fn validate_host_name(s: &str) -> Result<(), String> {
    if crate::store::names::valid_dns_name(s) {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid host name"))
    }
}

/// An intercept pattern: an exact name, or `*.suffix` for every name below `suffix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamePattern(pub String);

impl NamePattern {
    /// Whether `name` (lower-case, no trailing dot) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self.0.strip_prefix("*.") {
            Some(suffix) => name
                .strip_suffix(suffix)
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            None => name == self.0,
        }
    }
}

impl<'de> Deserialize<'de> for NamePattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?.to_ascii_lowercase();
        let s = s.strip_suffix('.').unwrap_or(&s).to_string();
        // `valid_dns_name` allows one trailing dot, already stripped here: a second one
        // ("hf.co..") would be kept and the pattern would never match any name.
        let check = if s.ends_with('.') {
            Err(format!("{:?} is not a valid host name", format!("{s}.")))
        } else {
            validate_host_name(s.strip_prefix("*.").unwrap_or(&s))
        };
        check
            .map_err(|e| de::Error::custom(format!("{e} (write an exact name or \"*.suffix\")")))?;
        Ok(NamePattern(s))
    }
}

/// An upstream base URL: `http(s)://host[:port][/prefix]`, stored without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseUrl(pub String);

impl BaseUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn uri(&self) -> http::Uri {
        self.0
            .parse()
            .expect("validated when the configuration was parsed")
    }
}

/// `upstream.parent`: `""` (none), `ADDR` or `ADDR:PORT`, ADDR an IP address (`[v6]` with a
/// port) or a host name. Returns the host (brackets removed) and the port, if one was given.
pub fn parse_parent(s: &str) -> std::result::Result<Option<(String, Option<u16>)>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let bad = |why: &str| {
        format!("`upstream.parent` {s:?} {why}; write an address such as \"10.0.0.2\", \"10.0.0.2:8443\" or \"cache.district.example\"")
    };
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Some((ip.to_string(), None)));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err(bad("has port 0"));
        }
        return Ok(Some((sa.ip().to_string(), Some(sa.port()))));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => {
            let p: u16 = p.parse().map_err(|_| bad("has a bad port"))?;
            if p == 0 {
                return Err(bad("has port 0"));
            }
            (h, Some(p))
        }
        None => (s, None),
    };
    if !crate::store::names::valid_dns_name(host) || host.contains(':') {
        return Err(bad("is not an address or host name"));
    }
    Ok(Some((host.to_ascii_lowercase(), port)))
}

fn parse_http_url(s: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("{s:?} must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{s:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{s:?} must not have a query string"));
    }
    Ok(uri)
}

impl<'de> Deserialize<'de> for BaseUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_http_url(&s).map_err(de::Error::custom)?;
        Ok(BaseUrl(s.trim_end_matches('/').to_string()))
    }
}

/// The data plane's public base URL; empty means "derive from the advertised address".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PublicUrl(pub String);

impl PublicUrl {
    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for PublicUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Ok(PublicUrl::default());
        }
        let uri = parse_http_url(&s).map_err(de::Error::custom)?;
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(de::Error::custom(format!(
                "{s:?} must be a bare base URL such as \"http://cache.lan:8080\" (no path)"
            )));
        }
        Ok(PublicUrl(s.trim_end_matches('/').to_string()))
    }
}

/// Where the running configuration came from; reload reads the same source again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    Quickstart,
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::Quickstart => f.write_str("built-in quick-start defaults"),
        }
    }
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config> {
        match self {
            ConfigSource::File(path) => Config::load(path),
            ConfigSource::Quickstart => Config::quickstart(),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file. The error names the file, the key and the line.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration file {}", path.display()))?;
        Config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parses configuration text. Errors read like
    /// `key cache.max_size: TOML parse error at line 3, column 12 ... invalid size "lots"`.
    pub fn parse(text: &str) -> std::result::Result<Config, String> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            let inner = inner.trim_end();
            if path == "." || path.is_empty() {
                format!("invalid configuration: {inner}")
            } else {
                format!("invalid configuration at key `{path}`: {inner}")
            }
        })?;
        config
            .check()
            .map_err(|e| format!("invalid configuration: {e}"))?;
        Ok(config)
    }

    /// Rules that span several keys.
    fn check(&self) -> std::result::Result<(), String> {
        if self.upstream.registries.is_empty() {
            return Err("`upstream.registries` must name at least one registry".into());
        }
        if self.cache.dir.as_os_str().is_empty() {
            return Err("`cache.dir` must not be empty".into());
        }
        if self.cache.max_fills == 0 || self.cache.fill_connections == 0 {
            return Err("`cache.max_fills` and `cache.fill_connections` must be at least 1".into());
        }
        if self.cache.slice_size.0 < (1 << 20) {
            return Err("`cache.slice_size` must be at least 1MiB".into());
        }
        parse_parent(&self.upstream.parent)?;
        self.cluster.check()?;
        Ok(())
    }

    /// The built-in quick-start configuration, with the cache directory chosen the way the
    /// seed's users expect: `$OLLAMA_MODELS`, else `~/.ollama/models` when it exists, else
    /// `./lancache-cache`.
    pub fn quickstart() -> Result<Config> {
        let mut config = Config::parse(QUICKSTART_TOML)
            .map_err(|e| anyhow::anyhow!("built-in quick-start configuration: {e}"))?;
        config.cache.dir = quickstart_cache_dir(
            std::env::var_os("OLLAMA_MODELS").map(PathBuf::from),
            std::env::var_os("HOME").map(PathBuf::from),
        );
        Ok(config)
    }
}

fn quickstart_cache_dir(ollama_models: Option<PathBuf>, home: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = ollama_models.filter(|d| !d.as_os_str().is_empty()) {
        return dir;
    }
    if let Some(dir) = home
        .map(|h| h.join(".ollama/models"))
        .filter(|d| d.is_dir())
    {
        return dir;
    }
    PathBuf::from("lancache-cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_section() {
        let c = Config::parse(
            "[cluster]\nstore = \"s3://lan/cache\"\nendpoint = \"http://10.0.0.9:8333\"\nnodes = [\"10.0.0.1\", \"10.0.0.2:8080\"]\nlease_ttl = \"10s\"\n",
        )
        .unwrap();
        assert!(c.cluster.enabled());
        assert_eq!(
            c.cluster.bucket_prefix().unwrap(),
            ("lan".into(), "cache".into())
        );
        assert_eq!(c.cluster.node_addrs().unwrap()[0].port(), 80);
        assert!(!Config::parse("").unwrap().cluster.enabled());
        for (bad, key) in [
            ("store = \"lan\"\nnodes = [\"10.0.0.1\"]", "cluster.store"),
            ("store = \"s3://b\"", "cluster.nodes"),
            ("store = \"s3://b\"\nnodes = [\"x y\"]", "cluster.nodes"),
            ("stor = \"s3://b\"", "stor"),
        ] {
            let e = Config::parse(&format!("[cluster]\n{bad}\n")).unwrap_err();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn upstream_parent_and_max_rate() {
        let c = Config::parse("[upstream]\nparent = \"10.0.0.2:8443\"\nmax_rate = \"200Mbit\"\n")
            .unwrap();
        assert_eq!(c.upstream.max_rate, Rate(25_000_000));
        assert_eq!(
            parse_parent(&c.upstream.parent).unwrap(),
            Some(("10.0.0.2".into(), Some(8443)))
        );
        assert_eq!(
            parse_parent("[fd00::2]:443").unwrap(),
            Some(("fd00::2".into(), Some(443)))
        );
        assert_eq!(
            parse_parent("Cache.District.example").unwrap(),
            Some(("cache.district.example".into(), None))
        );
        assert_eq!(parse_parent("").unwrap(), None);
        for bad in ["10.0.0.2:0", "host:port", "a b", "http://10.0.0.2"] {
            let e = Config::parse(&format!("[upstream]\nparent = {bad:?}\n")).unwrap_err();
            assert!(e.contains("upstream.parent"), "{bad}: {e}");
        }
        let e = Config::parse("[upstream]\nmax_rate = \"fast\"\n").unwrap_err();
        assert!(
            e.contains("upstream.max_rate") && e.contains("200Mbit"),
            "{e}"
        );
        let e = Config::parse("[upstream]\nmax_rate = 100\n").unwrap_err();
        assert!(e.contains("needs a unit"), "{e}");
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn packaged_and_quickstart_files_parse() {
        let packaged = Config::parse(PACKAGED_TOML).unwrap();
        assert_eq!(
            packaged,
            Config::default(),
            "the shipped file documents the defaults"
        );
        Config::parse(QUICKSTART_TOML).unwrap();
    }

    /// Found by the `config_parse` fuzz target: sizes serialised rounded (`5020GiB` as
    /// `4.9 TiB`), so a written-out configuration read back as a different one.
    #[test]
    fn serialised_config_parses_to_the_same_config() {
        for text in [
            PACKAGED_TOML,
            QUICKSTART_TOML,
            "[cache]\nmax_size = \"5020GiB\"\nmin_free = 1234567\nslice_size = \"33MB\"\n",
        ] {
            let config = Config::parse(text).unwrap();
            let again = toml::to_string(&config).unwrap();
            assert_eq!(Config::parse(&again).unwrap(), config, "{again}");
        }
    }

    /// Found by the `config_parse` fuzz target: `"hf.co.."` was accepted as the pattern
    /// `hf.co.`, which matches no name (and re-serialised as a different pattern).
    #[test]
    fn intercept_pattern_with_two_trailing_dots_is_refused() {
        let err = Config::parse("[dns]\nintercept = [\"hf.co..\"]\n").unwrap_err();
        assert!(err.contains("hf.co.."), "{err}");
        let ok = Config::parse("[dns]\nintercept = [\"HF.co.\", \"*.wild.test.\"]\n").unwrap();
        assert_eq!(
            ok.dns.intercept,
            vec![
                NamePattern("hf.co".into()),
                NamePattern("*.wild.test".into())
            ]
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = Config::parse("[cache]\ndir = \"/x\"\nmax_sise = \"1GiB\"\n").unwrap_err();
        assert!(err.contains("max_sise"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_value_names_key_and_line() {
        let err = Config::parse("[cache]\n\nmax_size = \"lots\"\n").unwrap_err();
        assert!(err.contains("cache.max_size"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        let err = Config::parse("[upstream]\nmanifest_ttl = \"soon\"\n").unwrap_err();
        assert!(
            err.contains("upstream.manifest_ttl") && err.contains("line 2"),
            "{err}"
        );
        let err = Config::parse("[dns]\nallow = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert!(err.contains("dns.allow") && err.contains("line 2"), "{err}");
        let err = Config::parse("[upstream.registries]\n\"registry.ollama.ai\" = \"ftp://x\"\n")
            .unwrap_err();
        assert!(
            err.contains("registry.ollama.ai") && err.contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn registries_keep_their_order() {
        let c = Config::parse(
            "[upstream.registries]\n\"b.example\" = \"http://127.0.0.1:1\"\n\"a.example\" = \"https://a.example/\"\n",
        )
        .unwrap();
        let names: Vec<_> = c.upstream.registries.keys().map(|h| h.as_str()).collect();
        assert_eq!(names, ["b.example", "a.example"]);
        assert_eq!(c.upstream.registries[1].as_str(), "https://a.example");
    }

    /// The last stop's note: a trailing dot was kept, so the key silently never matched.
    #[test]
    fn registry_keys_are_normalised_and_duplicates_refused() {
        let c = Config::parse(
            "[upstream.registries]\n\"Registry.Ollama.AI.\" = \"https://registry.ollama.ai\"\n",
        )
        .unwrap();
        let names: Vec<_> = c.upstream.registries.keys().map(|h| h.as_str()).collect();
        assert_eq!(names, ["registry.ollama.ai"]);
        let err = Config::parse(
            "[upstream.registries]\n\"hf.co\" = \"https://hf.co\"\n\"HF.co.\" = \"http://127.0.0.1:1\"\n",
        )
        .unwrap_err();
        assert!(
            err.contains("upstream.registries") && err.contains("\"hf.co\" is listed twice"),
            "{err}"
        );
        assert!(Config::parse("[upstream.registries]\n\"hf.co..\" = \"https://hf.co\"\n").is_err());
    }

    #[test]
    fn default_registries_include_hf_co() {
        let c = Config::default();
        let names: Vec<_> = c.upstream.registries.keys().map(|h| h.as_str()).collect();
        assert_eq!(names, ["registry.ollama.ai", "hf.co"]);
        assert_eq!(c.upstream.registries[1].as_str(), "https://hf.co");
    }

    #[test]
    fn wildcard_patterns() {
        let p = NamePattern("*.r2.cloudflarestorage.com".into());
        assert!(p.matches("abc.r2.cloudflarestorage.com"));
        assert!(!p.matches("r2.cloudflarestorage.com"));
        assert!(!p.matches("evilr2.cloudflarestorage.com"));
        let exact = NamePattern("hf.co".into());
        assert!(exact.matches("hf.co") && !exact.matches("x.hf.co"));
        assert!(Config::parse("[dns]\nintercept = [\"bad name!\"]\n").is_err());
    }

    #[test]
    fn quickstart_dir_choice() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(
            quickstart_cache_dir(Some("/m".into()), Some(tmp.path().into())),
            PathBuf::from("/m")
        );
        assert_eq!(
            quickstart_cache_dir(None, Some(tmp.path().into())),
            PathBuf::from("lancache-cache")
        );
        std::fs::create_dir_all(tmp.path().join(".ollama/models")).unwrap();
        assert_eq!(
            quickstart_cache_dir(None, Some(tmp.path().into())),
            tmp.path().join(".ollama/models")
        );
    }
}
