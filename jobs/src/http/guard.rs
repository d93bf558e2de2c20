//! Which addresses a job's outgoing requests may reach. A payload chooses its URLs, so
//! without this any client who can enqueue could make a worker fetch loopback services, the
//! private network or the cloud metadata address (169.254.169.254). This module owns the
//! rule (public addresses only, unless `[http] allow_hosts` lists the host or address), the
//! DNS resolver that applies it to every resolved address (so a name cannot smuggle in a
//! private one) and the check of a URL itself (its scheme, and a literal IP, which reqwest
//! connects to without resolving). It does not send requests or follow redirects:
//! `super::Http` does, checking each hop here.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Host;

use crate::config::{AllowHost, canonical};

/// Why a request was not sent: the same request would be refused again, so it is a
/// permanent failure; each message names the host and the way to allow it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    #[error("{url:?} is not an http(s) URL with a host")]
    Scheme { url: String },
    #[error(
        "refused to connect to {host}: {addr} is not a public address; list it in [http] \
         allow_hosts to allow it"
    )]
    Address { host: String, addr: IpAddr },
    #[error(
        "refused to connect to {host}: it resolves only to non-public addresses ({addrs}); list \
         it in [http] allow_hosts to allow it"
    )]
    Resolved { host: String, addrs: String },
}

/// The rule, built once from `[http] allow_hosts` (already validated by the config).
#[derive(Debug, Default)]
pub(crate) struct Guard {
    allow: Vec<AllowHost>,
}

impl Guard {
    pub(crate) fn new(allow_hosts: &[String]) -> Self {
        Self {
            allow: allow_hosts
                .iter()
                .filter_map(|h| AllowHost::parse(h).ok())
                .collect(),
        }
    }

    /// A host name the allow-list names: reached whatever it resolves to.
    fn name_allowed(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.allow
            .iter()
            .any(|a| matches!(a, AllowHost::Name(n) if *n == name))
    }

    fn addr_allowed(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allow.iter().any(|a| a.contains(ip))
    }

    /// Checks what can be checked before connecting: an http(s) URL with a host, and a
    /// literal IP host (no resolver sees it). Names are checked when they are resolved.
    pub(crate) fn check_url(&self, url: &Url) -> Result<(), Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused::Scheme {
                url: url.to_string(),
            });
        }
        let ip = match url.host() {
            None => {
                return Err(Refused::Scheme {
                    url: url.to_string(),
                });
            }
            Some(Host::Domain(_)) => return Ok(()),
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
        };
        if self.addr_allowed(ip) {
            Ok(())
        } else {
            Err(Refused::Address {
                host: url.host_str().unwrap_or_default().to_owned(),
                addr: ip,
            })
        }
    }

    /// The addresses of `host` a request may connect to: all of them for a listed name,
    /// else the allowed ones; none allowed is [`Refused::Resolved`].
    fn filter(&self, host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refused> {
        if self.name_allowed(host) {
            return Ok(addrs);
        }
        let (kept, refused): (Vec<_>, Vec<_>) =
            addrs.into_iter().partition(|a| self.addr_allowed(a.ip()));
        if kept.is_empty() && !refused.is_empty() {
            let mut list = String::new();
            for (i, a) in refused.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(list, "{sep}{}", a.ip());
            }
            return Err(Refused::Resolved {
                host: host.to_owned(),
                addrs: list,
            });
        }
        Ok(kept)
    }
}

/// The client's DNS resolver: the system's (getaddrinfo, off the runtime's threads), then
/// [`Guard`]'s filter, so a connection only ever goes to an allowed address.
pub(crate) struct Resolver {
    pub(crate) guard: Arc<Guard>,
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = Arc::clone(&self.guard);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept = guard.filter(&host, addrs)?;
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// True for addresses on the public internet: not unspecified, loopback, private (RFC 1918,
/// fc00::/7), shared (100.64/10), link-local (169.254/16 with the metadata address,
/// fe80::/10), documentation, benchmarking, multicast, broadcast or reserved.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let special = match (a, b, c) {
        // "This network" (incl. 0.0.0.0), private, loopback.
        (0 | 10 | 127, _, _) => true,
        // Shared address space (carrier-grade NAT).
        (100, 64..=127, _) => true,
        // Link-local, with the cloud metadata address 169.254.169.254.
        (169, 254, _) => true,
        // Private.
        (172, 16..=31, _) | (192, 168, _) => true,
        // IETF protocol assignments; documentation.
        (192, 0, 0 | 2) | (198, 51, 100) | (203, 0, 113) => true,
        // Benchmarking.
        (198, 18 | 19, _) => true,
        // Multicast, reserved, broadcast.
        (224.., _, _) => true,
        _ => false,
    };
    !special
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // Global unicast is 2000::/3; everything else (::, ::1, fc00::/7, fe80::/10, ff00::/8,
    // the deprecated IPv4-compatible ::/96) is not public.
    if s[0] & 0xe000 != 0x2000 {
        return false;
    }
    // Documentation (2001:db8::/32), and the prefixes that embed an IPv4 address which
    // could be a private one: 6to4 (2002::/16) and Teredo (2001::/32).
    !((s[0] == 0x2001 && s[1] == 0x0db8) || s[0] == 0x2002 || (s[0] == 0x2001 && s[1] == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn public_and_not() {
        for s in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:2800:220:1::1",
            "172.32.0.1",
        ] {
            assert!(is_public(ip(s)), "{s}");
        }
        for s in [
            "127.0.0.1",
            "127.0.0.2",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "2001:db8::1",
            "2002:7f00:1::",
        ] {
            assert!(!is_public(ip(s)), "{s}");
        }
    }

    #[test]
    fn allow_list() {
        let g = Guard::new(&["10.0.0.0/8".into(), "::1".into(), "Files.Internal.".into()]);
        assert!(g.addr_allowed(ip("10.9.8.7")));
        assert!(g.addr_allowed(ip("::ffff:10.9.8.7")));
        assert!(!g.addr_allowed(ip("11.0.0.0")) || is_public(ip("11.0.0.0")));
        assert!(!g.addr_allowed(ip("192.168.0.1")));
        assert!(g.addr_allowed(ip("::1")));
        assert!(!g.addr_allowed(ip("127.0.0.1")));
        assert!(g.name_allowed("files.internal"));
        let lo = SocketAddr::from(([127, 0, 0, 1], 0));
        let public = SocketAddr::from(([93, 184, 216, 34], 0));
        assert!(g.filter("files.internal", vec![lo]).is_ok());
        assert!(matches!(
            g.filter("evil.example", vec![lo]),
            Err(Refused::Resolved { .. })
        ));
        assert_eq!(
            g.filter("mixed.example", vec![lo, public]).ok(),
            Some(vec![public])
        );
        let url = |s: &str| Url::parse(s).expect("url");
        assert!(g.check_url(&url("http://10.0.0.1/")).is_ok());
        assert!(g.check_url(&url("http://[::1]:8080/")).is_ok());
        assert!(g.check_url(&url("http://169.254.169.254/")).is_err());
        assert!(
            g.check_url(&url("http://2130706433/")).is_err(),
            "127.0.0.1 as a number"
        );
        assert!(g.check_url(&url("file:///etc/passwd")).is_err());
    }
}
