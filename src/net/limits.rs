//! Per-client connection caps shared by the HTTP, RTMP and WebSocket listeners.
//!
//! A client is an IPv4 address or an IPv6 /64 (one subscriber's prefix: counting IPv6 per
//! address would let one host open a cap's worth of connections from each of 2^64
//! addresses). Addresses in the exempt list (loopback by default, a reverse proxy in front)
//! are never capped.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

use ipnet::IpNet;

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) as IPv4; others unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The key a client is counted under: IPv4 as is (an IPv4-mapped IPv6 address as IPv4),
/// IPv6 masked to its /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Parses a list of CIDRs or plain addresses (`127.0.0.0/8`, `::1`), naming the bad entry.
pub fn parse_nets(list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{s:?} is not an address or CIDR"))
        })
        .collect()
}

/// Whether `ip` (IPv4-mapped as IPv4) is in one of `nets`.
pub fn is_in(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|n| n.contains(&ip))
}

/// Counts open connections per client and refuses one over the cap.
#[derive(Debug)]
pub struct PerIpLimiter {
    limit: usize,
    exempt: Vec<IpNet>,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; the count drops with it.
#[derive(Debug)]
pub struct IpGuard {
    limiter: Option<(Arc<PerIpLimiter>, IpAddr)>,
}

impl PerIpLimiter {
    /// A limiter allowing `limit` connections per client (0: no cap), none for `exempt`.
    pub fn new(limit: usize, exempt: Vec<IpNet>) -> Arc<Self> {
        Arc::new(PerIpLimiter {
            limit,
            exempt,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `ip` is never capped.
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        is_in(&self.exempt, ip)
    }

    /// Counts a connection from `ip`, or `None` when the client is at its cap.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpGuard> {
        if self.limit == 0 || self.is_exempt(ip) {
            return Some(IpGuard { limiter: None });
        }
        let key = client_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(key).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(IpGuard {
            limiter: Some((self.clone(), key)),
        })
    }

    /// Open connections counted for `ip`'s client.
    pub fn count(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(&client_key(ip)).copied().unwrap_or(0)
    }
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        if let Some((limiter, key)) = self.limiter.take() {
            let mut counts = limiter
                .counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = counts.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(client_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        let l = PerIpLimiter::new(2, vec![]);
        let a = l.try_acquire(ip("2001:db8::1")).unwrap();
        let _b = l.try_acquire(ip("2001:db8::2")).unwrap();
        assert!(l.try_acquire(ip("2001:db8::3")).is_none(), "same /64");
        assert!(l.try_acquire(ip("2001:db8:0:1::3")).is_some(), "other /64");
        drop(a);
        assert!(l.try_acquire(ip("2001:db8::3")).is_some());
    }

    #[test]
    fn exempt_nets_are_never_capped_and_counts_drop_with_guards() {
        let exempt = parse_nets(&["127.0.0.0/8".into(), "::1".into()]).unwrap();
        let l = PerIpLimiter::new(1, exempt);
        let guards: Vec<_> = (0..5).map(|_| l.try_acquire(ip("127.0.0.2"))).collect();
        assert!(guards.iter().all(Option::is_some));
        assert!(l.try_acquire(ip("::ffff:127.0.0.1")).is_some());
        let g = l.try_acquire(ip("192.0.2.1")).unwrap();
        assert!(l.try_acquire(ip("192.0.2.1")).is_none());
        assert_eq!(l.count(ip("192.0.2.1")), 1);
        drop(g);
        assert_eq!(l.count(ip("192.0.2.1")), 0);
        assert!(parse_nets(&["10.0.0.0/33".into()]).is_err());
    }
}
