//! The default `advertise` set: the addresses of the interface that carries the default route,
//! which is the address LAN clients most likely reach this box at. Read from /proc/self/net/route
//! (IPv4), else /proc/self/net/ipv6_route, and getifaddrs(3). (`/proc/self/net`, not the
//! `/proc/net` symlink: the unit's `ProcSubset=pid` hides the latter but not the former.) Link-local IPv6 addresses are left out:
//! without a zone they are useless in a DNS answer.

use arc_swap::ArcSwapOption;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// Addresses answered for intercepted names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advertise {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

impl Advertise {
    pub fn from_addrs(addrs: &[IpAddr]) -> Advertise {
        let mut a = Advertise::default();
        for ip in addrs {
            match ip {
                IpAddr::V4(v4) => a.v4.push(*v4),
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => a.v4.push(v4),
                    None => a.v6.push(*v6),
                },
            }
        }
        a
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// Addresses set from outside the DNS service (cluster mode: the healthy nodes, this one
/// first). While set, they take the place of the configured or default-route set. The DNS
/// service only reads it; whoever owns the knowledge writes it, so neither knows the other.
#[derive(Debug, Clone, Default)]
pub struct Shared(Arc<ArcSwapOption<Advertise>>);

impl Shared {
    pub fn set(&self, a: Option<Advertise>) {
        self.0.store(a.map(Arc::new));
    }

    pub fn load(&self) -> arc_swap::Guard<Option<Arc<Advertise>>> {
        self.0.load()
    }
}

/// The interface with the default route (lowest metric), IPv4 first.
fn default_route_interface() -> Option<String> {
    let v4 = std::fs::read_to_string("/proc/self/net/route").unwrap_or_default();
    let best = v4
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            let up = flags & 1 != 0;
            if !(up && *f.get(1)? == "00000000" && *f.get(7)? == "00000000") {
                return None;
            }
            Some((f.get(6)?.parse::<u32>().ok()?, f[0].to_string()))
        })
        .min();
    if let Some((_, iface)) = best {
        return Some(iface);
    }
    let v6 = std::fs::read_to_string("/proc/self/net/ipv6_route").unwrap_or_default();
    v6.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let default = *f.first()? == "00000000000000000000000000000000" && *f.get(1)? == "00";
            let iface = *f.get(9)?;
            if !default || iface == "lo" {
                return None;
            }
            Some((u32::from_str_radix(f.get(5)?, 16).ok()?, iface.to_string()))
        })
        .min()
        .map(|(_, iface)| iface)
}

/// The addresses of the default-route interface; `None` when there is no default route or it
/// has no usable address.
pub fn default_route_addresses() -> Option<Advertise> {
    let iface = default_route_interface()?;
    let mut a = Advertise::default();
    for ifa in nix::ifaddrs::getifaddrs().ok()? {
        if ifa.interface_name != iface {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            a.v4.push(v4.ip());
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let ip = v6.ip();
            if (ip.segments()[0] & 0xffc0) != 0xfe80 {
                a.v6.push(ip);
            }
        }
    }
    (!a.is_empty()).then_some(a)
}
