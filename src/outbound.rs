//! Where the server may connect to on a user's behalf (webhooks, restreams): the outbound
//! destinations policy.
//!
//! By default a destination may not be loopback, unspecified, link-local (cloud metadata
//! services live there), private (RFC 1918, CGNAT), unique-local, multicast, broadcast or
//! reserved, nor one of the server's own listeners: a user with `webhooks:write` or
//! `restreams:write` must not make the server reach what only it can reach.
//! `[security] outbound_allow` lets an operator open addresses or CIDRs (a LAN restream
//! target); `outbound_deny` closes more (CIDRs or host names, a name also covering its
//! subdomains). Deny wins over allow.
//!
//! Literal addresses are refused when a destination is created; names are resolved when a
//! connection is made, every resolved address is checked, and the connection goes to a
//! checked address (no second lookup an attacker's DNS could answer differently).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use crate::config::SecurityConfig;

/// The policy, built once from `[security]`.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    deny_hosts: Vec<String>,
    own: Vec<SocketAddr>,
}

impl OutboundPolicy {
    /// The policy of a validated configuration, with the server's own listeners.
    pub fn for_config(config: &crate::config::Config) -> Self {
        Self::from_config(&config.security)
            .unwrap_or_default()
            .with_own_listeners(vec![config.http.listen, config.rtmp.listen])
    }

    /// Builds the policy; an error names the bad entry.
    pub fn from_config(sec: &SecurityConfig) -> Result<Self, String> {
        let allow = crate::net::limits::parse_nets(&sec.outbound_allow)
            .map_err(|e| format!("security.outbound_allow: {e}"))?;
        let mut deny = vec![];
        let mut deny_hosts = vec![];
        for entry in &sec.outbound_deny {
            let e = entry.trim();
            match crate::net::limits::parse_nets(&[e.to_owned()]) {
                Ok(n) => deny.extend(n),
                Err(_) if is_host_name(e) => {
                    deny_hosts.push(e.trim_end_matches('.').to_ascii_lowercase())
                }
                Err(_) => {
                    return Err(format!(
                        "security.outbound_deny: {e:?} is not an address, CIDR or host name"
                    ))
                }
            }
        }
        Ok(OutboundPolicy {
            allow,
            deny,
            deny_hosts,
            own: vec![],
        })
    }

    /// The server's own listeners, refused like loopback.
    pub fn with_own_listeners(mut self, own: Vec<SocketAddr>) -> Self {
        self.own = own;
        self
    }

    /// Whether `addr` may be connected to; the error says why not.
    pub fn check(&self, addr: SocketAddr) -> Result<(), String> {
        let ip = canonical(addr.ip());
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return Err(format!("{ip} is denied by security.outbound_deny"));
        }
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        if let Some(kind) = forbidden_kind(ip) {
            return Err(format!(
                "{ip} is a {kind} address; allow it in security.outbound_allow to use it"
            ));
        }
        // A listener on all addresses is reached through loopback (refused above) or an
        // interface address; one bound to a public address is caught here (any port when the
        // port is not known, as for a name resolved for an HTTP client).
        let own = self
            .own
            .iter()
            .any(|o| (o.port() == addr.port() || addr.port() == 0) && canonical(o.ip()) == ip);
        if own {
            return Err(format!("{addr} is this server's own listener"));
        }
        Ok(())
    }

    /// Checks a destination's host when it is created: a literal address is checked now, a
    /// denied name refused; other names are checked when they are resolved.
    pub fn check_host(&self, host: &str, port: u16) -> Result<(), String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.check(SocketAddr::new(ip, port));
        }
        let name = bare.trim_end_matches('.').to_ascii_lowercase();
        if name == "localhost" || name.ends_with(".localhost") {
            if self
                .allow
                .iter()
                .any(|n| n.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)))
            {
                return Ok(());
            }
            return Err(format!(
                "{host} is a loopback name; allow 127.0.0.0/8 in security.outbound_allow to use it"
            ));
        }
        if self
            .deny_hosts
            .iter()
            .any(|d| name == *d || name.ends_with(&format!(".{d}")))
        {
            return Err(format!("{host} is denied by security.outbound_deny"));
        }
        Ok(())
    }

    /// Resolves `host` and checks every address: all of them, or an error naming the
    /// refused one (a name that resolves to any forbidden address is refused whole).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        self.check_host(host, port)?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|_| format!("cannot resolve {host}"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("cannot resolve {host}"));
        }
        for a in &addrs {
            if let Err(e) = self.check(*a) {
                // The address stays in the server's log: telling a tenant where an internal
                // name points would make the policy a way to map the network.
                tracing::warn!(%host, "outbound: {e}");
                return Err(format!(
                    "{host} resolves to an address the outbound policy refuses"
                ));
            }
        }
        Ok(addrs)
    }
}

/// A DNS resolver for reqwest that applies the policy to every resolved address, so the
/// HTTP client connects only to checked addresses (literal addresses do not reach a
/// resolver: check them with [`OutboundPolicy::check_host`] before sending).
#[derive(Debug, Clone)]
pub struct CheckedResolver(pub std::sync::Arc<OutboundPolicy>);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // The port is set by the client from the URL; 0 here.
            let addrs = policy
                .resolve(&host, 0)
                .await
                .map_err(|e| Box::new(Refused(e)) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A destination refused by the policy.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl Refused {
    /// The policy's reason when `err` (or an error it wraps) is a refusal.
    pub fn find(err: &(dyn std::error::Error + 'static)) -> Option<String> {
        let mut e: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(cur) = e {
            if let Some(r) = cur.downcast_ref::<Refused>() {
                return Some(r.0.clone());
            }
            e = cur.source();
        }
        None
    }
}

fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.')
            .filter(|l| !l.is_empty())
            .all(|l| l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

use crate::net::limits::canonical;

/// The kind of address refused by default, or `None` for a public unicast address.
pub fn forbidden_kind(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified (\"this network\")")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_private() {
        Some("private")
    } else if o[0] == 100 && (o[1] & 0xC0) == 64 {
        Some("shared (CGNAT)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || o[0] >= 240 {
        Some("reserved")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol assignment")
    } else if o[0] == 198 && (o[1] & 0xFE) == 18 {
        Some("benchmarking")
    } else {
        None
    }
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if (s[0] & 0xFFC0) == 0xFE80 {
        Some("link-local")
    } else if (s[0] & 0xFE00) == 0xFC00 {
        Some("unique-local")
    } else if (s[0] & 0xFFC0) == 0xFEC0 {
        Some("site-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if s[0] == 0x64 && s[1] == 0xFF9B {
        // NAT64: the IPv4 address in the last 32 bits decides.
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        v4_kind(v4)
    } else if s[0] == 0x2002 {
        // 6to4: the IPv4 address in bits 16..48.
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        v4_kind(v4)
    } else if s[0..6] == [0, 0, 0, 0, 0, 0] {
        // IPv4-compatible (deprecated) ::a.b.c.d.
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        v4_kind(v4).or(Some("IPv4-compatible"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> OutboundPolicy {
        OutboundPolicy::from_config(&SecurityConfig {
            outbound_allow: allow.iter().map(|s| s.to_string()).collect(),
            outbound_deny: deny.iter().map(|s| s.to_string()).collect(),
            ..SecurityConfig::default()
        })
        .unwrap()
    }

    fn at(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 1935)
    }

    #[test]
    fn non_public_addresses_are_refused_by_default() {
        let p = policy(&[], &[]);
        for a in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "169.254.169.254",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "fc00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "::127.0.0.1",
        ] {
            assert!(p.check(at(a)).is_err(), "{a} must be refused");
        }
        for a in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "172.32.0.1",
            "100.128.0.1",
        ] {
            assert!(p.check(at(a)).is_ok(), "{a} is public");
        }
        let e = p.check(at("169.254.169.254")).unwrap_err();
        assert!(
            e.contains("link-local") && e.contains("outbound_allow"),
            "{e}"
        );
    }

    #[test]
    fn allow_opens_deny_closes_and_deny_wins() {
        let p = policy(
            &["192.168.1.20/32", "127.0.0.0/8"],
            &["127.0.0.5", "8.8.8.0/24", "evil.example"],
        );
        assert!(p.check(at("192.168.1.20")).is_ok());
        assert!(p.check(at("192.168.1.21")).is_err());
        assert!(p.check(at("127.0.0.1")).is_ok());
        assert!(p.check(at("127.0.0.5")).is_err(), "deny wins over allow");
        assert!(p.check(at("8.8.8.8")).is_err());
        assert!(p.check_host("evil.example", 80).is_err());
        assert!(
            p.check_host("cdn.EVIL.example.", 80).is_err(),
            "subdomains too"
        );
        assert!(p.check_host("notevil.example", 80).is_ok());
        assert!(p.check_host("localhost", 80).is_ok(), "loopback allowed");
        assert!(policy(&[], &[]).check_host("localhost", 80).is_err());
        assert!(policy(&[], &[]).check_host("[::1]", 80).is_err());
        assert!(policy(&[], &[]).check_host("db.localhost", 80).is_err());
        assert!(OutboundPolicy::from_config(&SecurityConfig {
            outbound_deny: vec!["not a host!".into()],
            ..SecurityConfig::default()
        })
        .is_err());
    }

    #[test]
    fn own_listeners_are_refused() {
        let p = policy(&[], &[]).with_own_listeners(vec!["93.184.216.34:1935".parse().unwrap()]);
        assert!(p.check(at("93.184.216.34")).is_err());
        assert!(p
            .check(SocketAddr::new("93.184.216.34".parse().unwrap(), 443))
            .is_ok());
    }

    #[tokio::test]
    async fn names_are_resolved_and_every_address_checked() {
        let p = policy(&[], &[]);
        // "localhost" is refused before any lookup; a numeric name resolves to loopback.
        assert!(p.resolve("localhost", 80).await.is_err());
        let e = p.resolve("127.0.0.1", 80).await.unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        // A name's addresses are not told.
        let e = p.resolve("127.1", 80).await.unwrap_err();
        assert!(!e.contains("127.0.0.1"), "{e}");
        let open = policy(&["127.0.0.0/8", "::1/128"], &[]);
        let addrs = open.resolve("localhost", 80).await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
