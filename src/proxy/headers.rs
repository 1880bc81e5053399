//! Header rules of a forwarding proxy: hop-by-hop removal (RFC 9110 §7.6.1) and the
//! `X-Forwarded-*` / `Via` headers.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1, plus the
/// non-standard `Proxy-Connection` and `Keep-Alive` that old clients still send).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers, including every header named in `Connection`. With
/// `keep_upgrade`, `Upgrade` and `Connection: upgrade` survive so a WebSocket handshake can pass.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names (cheap comparisons of standard names) finds which of them are
    // there: most messages carry none, or only `Connection: keep-alive`, and each removal of an
    // absent name would still hash it and probe the map.
    let mut present = 0u8;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        } else if k == PROXY_CONNECTION {
            present |= 1 << HOP_BY_HOP.len();
        }
    }
    if !keep_upgrade && present == 0 {
        return;
    }
    if present & 1 != 0 {
        // Every `Connection` header counts (a second one's tokens are as binding as the first's).
        // Named headers: only allocate when there are any besides the usual suspects.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|conn| conn.to_str().unwrap_or("").split(','))
            .map(str::trim)
            .filter(|t| {
                let handled_below = t.eq_ignore_ascii_case("close")
                    || t.eq_ignore_ascii_case("keep-alive")
                    || (keep_upgrade && t.eq_ignore_ascii_case("upgrade"));
                !t.is_empty() && !handled_below
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) == 0 || (keep_upgrade && (h == header::UPGRADE || h == header::CONNECTION)) {
            continue;
        }
        headers.remove(h);
    }
    if present & (1 << HOP_BY_HOP.len()) != 0 {
        headers.remove(&PROXY_CONNECTION);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether the request asks for a protocol upgrade (HTTP/1.1 `Connection: upgrade` +
/// `Upgrade`).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().unwrap_or("").split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client side of one connection, as the listener found it (once per connection): the
/// client's address (the peer's, or the one its PROXY header carried), rendered for
/// `X-Forwarded-For`; whether the connection is TLS; and, when the peer is a trusted proxy, the
/// trusted list to read its `X-Forwarded-*` headers with.
#[derive(Clone, Debug)]
pub struct ClientIp {
    /// The address.
    pub ip: IpAddr,
    /// The address as a header value.
    pub value: HeaderValue,
    /// The client connection is TLS.
    pub tls: bool,
    /// Set when `ip` is a trusted proxy.
    pub trusted: Option<std::sync::Arc<super::listener::TrustedProxies>>,
}

impl ClientIp {
    /// Renders `ip` once: a plain connection from an untrusted peer.
    pub fn new(ip: IpAddr) -> Self {
        let value = HeaderValue::try_from(ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        ClientIp { ip, value, tls: false, trusted: None }
    }

    /// The same, over TLS or not.
    pub fn secure(self, tls: bool) -> Self {
        ClientIp { tls, ..self }
    }

    /// The same, from a trusted proxy (`Some`) or not.
    pub fn trusting(self, trusted: Option<std::sync::Arc<super::listener::TrustedProxies>>) -> Self {
        ClientIp { trusted, ..self }
    }
}

/// Who the client of one request is, after trusted proxies have had their say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forwarded {
    /// The client: the rightmost untrusted hop of the trusted chain, or the peer.
    pub client: IpAddr,
    /// The client used HTTPS: to us, or to a trusted proxy that said so.
    pub https: bool,
}

/// Who the client of a request is and whether it used HTTPS, without touching the headers: the
/// peer itself, unless the peer is a trusted proxy whose `X-Forwarded-*` headers say more.
/// Every `X-Forwarded-For` line counts, in order, as one list (RFC 9110 §5.3): HAProxy's
/// `option forwardfor` adds a line of its own after the client's. A multi-hop
/// `X-Forwarded-Proto` (`https, http`) names the client's protocol first.
pub fn forwarded(headers: &HeaderMap, client: &ClientIp) -> Forwarded {
    let Some(trusted) = &client.trusted else {
        return Forwarded { client: client.ip, https: client.tls };
    };
    let https = match headers.get(&X_FORWARDED_PROTO) {
        Some(p) => {
            p.as_bytes().split(|b| *b == b',').next().is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"https"))
        }
        None => client.tls,
    };
    Forwarded { client: rightmost_untrusted(headers, trusted, client.ip), https }
}

/// Sets `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host`. From a trusted proxy,
/// its `X-Forwarded-For` lines are joined and appended to (one line) and its `-Proto` / `-Host`
/// are kept; from any other peer all three are replaced, so a client cannot forge them: a
/// request without a host gets no `X-Forwarded-Host` at all. Who the client is comes from
/// [`forwarded`], read once per request by the caller.
pub fn set_forwarded(headers: &mut HeaderMap, client: &ClientIp, host: Option<&HeaderValue>) {
    let proto = HeaderValue::from_static(if client.tls { "https" } else { "http" });
    if client.trusted.is_none() {
        headers.insert(X_FORWARDED_FOR.clone(), client.value.clone());
        headers.insert(X_FORWARDED_PROTO.clone(), proto);
        match host {
            Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
        return;
    }
    let appended = joined_xff(headers).and_then(|mut list| {
        list.extend_from_slice(b", ");
        list.extend_from_slice(client.value.as_bytes());
        HeaderValue::from_maybe_shared(bytes::Bytes::from(list)).ok()
    });
    headers.insert(X_FORWARDED_FOR.clone(), appended.unwrap_or_else(|| client.value.clone()));
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), proto);
    }
    if let Some(h) = host
        && !headers.contains_key(&X_FORWARDED_HOST)
    {
        headers.insert(X_FORWARDED_HOST.clone(), h.clone());
    }
}

/// Every non-empty `X-Forwarded-For` line, in order, joined with `, `; `None` when there is
/// none. Only called for a trusted peer.
fn joined_xff(headers: &HeaderMap) -> Option<Vec<u8>> {
    let mut list: Option<Vec<u8>> = None;
    for line in headers.get_all(&X_FORWARDED_FOR) {
        let v = line.as_bytes().trim_ascii();
        if v.is_empty() {
            continue;
        }
        match &mut list {
            Some(l) => {
                l.extend_from_slice(b", ");
                l.extend_from_slice(v);
            }
            None => list = Some(v.to_vec()),
        }
    }
    list
}

/// The client a trusted chain names: walking every `X-Forwarded-For` line from the last one,
/// each from the right, the first hop that is not a trusted proxy. Empty list elements are
/// skipped (RFC 9110 §5.6.1); a hop that is not an address ends the walk at its right
/// neighbour (what a trusted proxy wrote last), never at the forged value.
fn rightmost_untrusted(headers: &HeaderMap, trusted: &super::listener::TrustedProxies, peer: IpAddr) -> IpAddr {
    let mut client = peer;
    for line in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(line) = line.to_str() else { return client };
        for hop in line.rsplit(',').map(str::trim).filter(|h| !h.is_empty()) {
            let Some(ip) =
                hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
            else {
                return client;
            };
            client = ip;
            if !trusted.contains(ip) {
                return client;
            }
        }
    }
    client
}

/// Appends `Via: <version> routeid` (RFC 9110 §7.6.3).
pub fn add_via(headers: &mut HeaderMap, version: http::Version) {
    let v = match version {
        http::Version::HTTP_2 => "2 routeid",
        http::Version::HTTP_10 => "1.0 routeid",
        _ => "1.1 routeid",
    };
    headers.append(header::VIA, HeaderValue::from_static(v));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_standard_and_named_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, X-Secret, keep-alive"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn every_connection_header_names_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("x-one"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-two, close"));
        h.insert("x-one", HeaderValue::from_static("1"));
        h.insert("x-two", HeaderValue::from_static("2"));
        h.insert("x-kept", HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn keeps_upgrade_for_websocket() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    fn spoofed() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6, 203.0.113.9, 10.0.0.2"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil"));
        h
    }

    /// What the proxy does per request: read who the client is, then rewrite the headers.
    fn both(h: &mut HeaderMap, peer: &ClientIp, host: Option<&HeaderValue>) -> Forwarded {
        let f = forwarded(h, peer);
        set_forwarded(h, peer, host);
        f
    }

    #[test]
    fn an_untrusted_peer_gets_its_forwarded_headers_replaced() {
        let mut h = spoofed();
        let f = both(&mut h, &ClientIp::new("127.0.0.1".parse().unwrap()), Some(&HeaderValue::from_static("shop")));
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop");
        assert_eq!(f, Forwarded { client: "127.0.0.1".parse().unwrap(), https: false });
        let mut h = HeaderMap::new();
        let tls = ClientIp::new("127.0.0.1".parse().unwrap()).secure(true);
        assert!(both(&mut h, &tls, None).https);
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn an_untrusted_request_without_host_loses_a_forged_forwarded_host() {
        let mut h = spoofed();
        set_forwarded(&mut h, &ClientIp::new("127.0.0.1".parse().unwrap()), None);
        assert_eq!(h.get("x-forwarded-host"), None);
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    fn trusted_peer() -> ClientIp {
        let trusted = std::sync::Arc::new("10.0.0.0/8".parse::<super::super::listener::TrustedProxies>().unwrap());
        ClientIp::new("10.0.0.1".parse().unwrap()).trusting(Some(trusted))
    }

    #[test]
    fn a_trusted_peer_is_appended_to_and_names_the_client() {
        let peer = trusted_peer();
        let mut h = spoofed();
        let f = both(&mut h, &peer, Some(&HeaderValue::from_static("shop")));
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 203.0.113.9, 10.0.0.2, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "evil", "kept from the trusted proxy");
        // 10.0.0.2 is another trusted hop; 203.0.113.9 is the client; 6.6.6.6 is its forgery.
        assert_eq!(f, Forwarded { client: "203.0.113.9".parse().unwrap(), https: true });
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("junk, 10.0.0.3"));
        assert_eq!(both(&mut h, &peer, None).client, "10.0.0.3".parse::<IpAddr>().unwrap());
        let mut h = HeaderMap::new();
        let f = both(&mut h, &peer, None);
        assert_eq!((f.client, f.https), (peer.ip, false));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
    }

    #[test]
    fn every_forwarded_for_line_counts_in_order() {
        // The client's forgery, then the line HAProxy's `option forwardfor` adds.
        let peer = trusted_peer();
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.append("x-forwarded-for", HeaderValue::from_static(" "));
        h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.9, 10.0.0.2"));
        let f = both(&mut h, &peer, None);
        assert_eq!(f.client, "203.0.113.9".parse::<IpAddr>().unwrap());
        let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["6.6.6.6, 203.0.113.9, 10.0.0.2, 10.0.0.1"], "one line, every hop kept");
        // A line that is all trusted hops walks on into the line before it.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2,,10.0.0.3"));
        assert_eq!(forwarded(&h, &peer).client, "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_multi_hop_forwarded_proto_names_the_client_first() {
        let peer = trusted_peer();
        let proto = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-proto", HeaderValue::from_static(v));
            forwarded(&h, &peer).https
        };
        assert!(proto("https, http"));
        assert!(proto(" HTTPS"));
        assert!(!proto("http, https"));
        assert!(!proto(""));
    }
}
