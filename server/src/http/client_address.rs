//! Who the client is, for per-address limits: the TCP peer, unless the peer is
//! a trusted proxy (`CHAT_TRUSTED_PROXIES`: the Ingress, a load balancer),
//! whose `X-Forwarded-For` (or `Forwarded`) then names the client.
//!
//! Behind an Ingress every request comes from the Ingress's address, so keying
//! limits on the peer would put every user in one bucket, and one bad login a
//! second would lock everybody out. Headers are believed only from trusted
//! peers, and only as far as the chain of trusted hops goes: the entry a
//! client could forge is left of the last one our own proxies appended.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;

use crate::state::AppState;

/// The client's address as limits see it (see [`ClientAddress::bucket`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddress(pub IpAddr);

impl ClientAddress {
    /// The key for per-address limits: an IPv4 address, or an IPv6 /64 (one
    /// household or one machine gets a whole /64 and can pick any address in it).
    pub fn bucket(self) -> IpAddr {
        match self.0 {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let [a, b, c, d, ..] = v6.segments();
                    IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
                }
            },
        }
    }
}

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Requests built in process (tests through `oneshot`) have no peer.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([127, 0, 0, 1]), |info| info.0.ip());
        Ok(Self(resolve(
            peer,
            &parts.headers,
            &state.limits.trusted_proxies,
        )))
    }
}

/// The client behind `peer`: walking the forwarded chain from the nearest hop
/// back, the first address that is not a trusted proxy.
pub(crate) fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_chain(headers).into_iter().rev() {
        client = hop;
        if !is_trusted(&hop) {
            break;
        }
    }
    client
}

/// The addresses of `X-Forwarded-For`, or else of `Forwarded`'s `for=`, in
/// order (client first). An entry that is not an address (`unknown`, an
/// obfuscated name) ends the chain there: nothing left of it can be trusted.
fn forwarded_chain(headers: &HeaderMap) -> Vec<IpAddr> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_owned())
            .collect()
    };
    let mut entries = values("x-forwarded-for");
    if entries.is_empty() {
        entries = values("forwarded")
            .iter()
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (key, value) = pair.trim().split_once('=')?;
                    key.eq_ignore_ascii_case("for")
                        .then(|| value.trim_matches('"').to_owned())
                })
            })
            .collect();
    }
    let mut chain = Vec::new();
    for entry in entries.iter().rev() {
        match parse_node(entry) {
            Some(ip) => chain.push(ip),
            None => break,
        }
    }
    chain.reverse();
    chain
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:5678`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.rsplit_once(':')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let forged = headers(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(resolve(peer, &forged, &[]), peer);
        assert_eq!(resolve(peer, &forged, &nets(&["10.0.0.0/8"])), peer);
    }

    #[test]
    fn behind_trusted_proxies_the_first_untrusted_hop_from_the_right_is_the_client() {
        let ingress: IpAddr = "10.0.0.5".parse().unwrap();
        let trusted = nets(&["10.0.0.0/8"]);
        // The client forged the left entry; our Ingress appended the real one.
        let chain = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7")]);
        assert_eq!(
            resolve(ingress, &chain, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // Two trusted hops (a cloud load balancer, then the Ingress).
        let chain = headers(&[("x-forwarded-for", "198.51.100.7, 10.1.2.3")]);
        assert_eq!(
            resolve(ingress, &chain, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // Several header lines count as one list.
        let chain = headers(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-for", "10.1.2.3"),
        ]);
        assert_eq!(
            resolve(ingress, &chain, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // No header: the proxy itself.
        assert_eq!(resolve(ingress, &HeaderMap::new(), &trusted), ingress);
    }

    #[test]
    fn forwarded_is_read_when_there_is_no_x_forwarded_for() {
        let ingress: IpAddr = "10.0.0.5".parse().unwrap();
        let chain = headers(&[(
            "forwarded",
            r#"for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711""#,
        )]);
        assert_eq!(
            resolve(ingress, &chain, &nets(&["10.0.0.0/8"])),
            "2001:db8:cafe::17".parse::<IpAddr>().unwrap()
        );
        // A name instead of an address stops the walk at the hop after it.
        let chain = headers(&[("x-forwarded-for", "unknown, 10.9.9.9")]);
        assert_eq!(
            resolve(ingress, &chain, &nets(&["10.0.0.0/8"])),
            "10.9.9.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64_and_mapped_ipv4_is_ipv4() {
        let a = ClientAddress("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = ClientAddress("2001:db8:1:2:bbbb::2".parse().unwrap());
        let other = ClientAddress("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a.bucket(), b.bucket());
        assert_ne!(a.bucket(), other.bucket());
        let mapped = ClientAddress("::ffff:198.51.100.7".parse().unwrap());
        assert_eq!(mapped.bucket(), "198.51.100.7".parse::<IpAddr>().unwrap());
    }
}
