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
    // Most messages carry none of them: one pass over the names (cheap comparisons of standard
    // names) spares a dozen hash-map removals per message.
    if !keep_upgrade && !headers.keys().any(|k| HOP_BY_HOP.contains(k) || k == PROXY_CONNECTION) {
        return;
    }
    {
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
    for h in &HOP_BY_HOP {
        if keep_upgrade && (h == header::UPGRADE || h == header::CONNECTION) {
            continue;
        }
        headers.remove(h);
    }
    headers.remove(&PROXY_CONNECTION);
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

/// The client's address, rendered once per connection for `X-Forwarded-For`.
#[derive(Clone, Debug)]
pub struct ClientIp {
    /// The address.
    pub ip: IpAddr,
    /// The address as a header value.
    pub value: HeaderValue,
}

impl ClientIp {
    /// Renders `ip` once.
    pub fn new(ip: IpAddr) -> Self {
        let value = HeaderValue::try_from(ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        ClientIp { ip, value }
    }
}

/// Sets `X-Forwarded-For` (appending the client to an existing list), `X-Forwarded-Proto` and
/// `X-Forwarded-Host`.
pub fn set_forwarded(headers: &mut HeaderMap, client: &ClientIp, host: Option<&HeaderValue>) {
    let appended = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => HeaderValue::try_from(format!("{prev}, {}", client.ip)).ok(),
        _ => None,
    };
    headers.insert(X_FORWARDED_FOR.clone(), appended.unwrap_or_else(|| client.value.clone()));
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST.clone(), h.clone());
    }
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

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        set_forwarded(&mut h, &ClientIp::new("127.0.0.1".parse().unwrap()), Some(&HeaderValue::from_static("shop")));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop");
    }
}
