//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, v1 text and v2 binary), as AWS NLB and
//! HAProxy send it in front of a connection: the client's address, before any byte of the
//! client's own. Parsing is the `ppp` crate's; this module reads exactly one header from a
//! socket, bounded in size, and keeps whatever followed it for the next reader.

use std::net::SocketAddr;

use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A v2 header with TLVs can be long; nothing legitimate in front of us sends more than this.
const MAX_HEADER: usize = 4096;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The bytes are not a PROXY header.
    #[error("not a valid PROXY protocol header")]
    Invalid,
    /// The peer closed before a whole header arrived.
    #[error("the connection ended inside the PROXY header")]
    Truncated,
    /// Longer than any header we accept.
    #[error("PROXY header longer than {MAX_HEADER} bytes")]
    TooLong,
    /// Reading failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

impl ProxyHeaderError {
    /// A bounded label for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProxyHeaderError::Invalid => "invalid",
            ProxyHeaderError::Truncated => "truncated",
            ProxyHeaderError::TooLong => "too_long",
            ProxyHeaderError::Io(_) => "io",
        }
    }
}

/// What a complete header said.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A header of `len` bytes; `source` is the client's address (`None` for `UNKNOWN`, `LOCAL`
    /// or a non-IP family: the connection's own peer then stands).
    Done {
        /// Bytes the header takes.
        len: usize,
        /// The client address it carries.
        source: Option<SocketAddr>,
    },
}

/// Parses the start of `buf` as a v1 or v2 header.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    // ppp reads a v1 prefix as incomplete even when it cannot become one: refuse early whatever
    // starts with neither signature.
    const V1: &[u8] = b"PROXY ";
    const V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    let n = buf.len().min(V2.len());
    if !V1.starts_with(&buf[..buf.len().min(V1.len())]) && !V2.starts_with(&buf[..n]) {
        return Err(ProxyHeaderError::Invalid);
    }
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return Ok(Parsed::Incomplete);
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let source = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
                ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
                ppp::v1::Addresses::Unknown => None,
            };
            Ok(Parsed::Done { len: h.header.len(), source })
        }
        HeaderResult::V2(Ok(h)) => {
            let source = match (h.command, h.addresses) {
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                _ => None,
            };
            Ok(Parsed::Done { len: h.len(), source })
        }
        _ => Err(ProxyHeaderError::Invalid),
    }
}

/// Reads one header from `io`. Returns the client address it carries and the bytes read past
/// it (the client's first bytes), which the caller must serve before reading `io` again.
pub async fn read_header<R: AsyncRead + Unpin>(io: &mut R) -> Result<(Option<SocketAddr>, Vec<u8>), ProxyHeaderError> {
    let mut buf = Vec::with_capacity(256);
    loop {
        if io.read_buf(&mut buf).await? == 0 {
            return Err(ProxyHeaderError::Truncated);
        }
        match parse(&buf)? {
            Parsed::Incomplete if buf.len() >= MAX_HEADER => return Err(ProxyHeaderError::TooLong),
            Parsed::Incomplete => {}
            Parsed::Done { len, source } => {
                buf.drain(..len.min(buf.len()));
                return Ok((source, buf));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(src: [u8; 4], port: u16) -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.extend([0x21, 0x11, 0, 12]); // v2 PROXY, TCP over IPv4, 12 address bytes
        h.extend(src);
        h.extend([10, 0, 0, 1]);
        h.extend(port.to_be_bytes());
        h.extend(443u16.to_be_bytes());
        h
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n";
        let Parsed::Done { len, source } = parse(h).unwrap() else { panic!() };
        assert_eq!(&h[len..], b"GET / HTTP/1.1\r\n");
        assert_eq!(source, Some("203.0.113.7:51000".parse().unwrap()));
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n";
        let Parsed::Done { source, .. } = parse(h).unwrap() else { panic!() };
        assert_eq!(source, Some("[2001:db8::7]:51000".parse().unwrap()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), Parsed::Done { len: 15, source: None });
    }

    #[test]
    fn v2_ipv4_and_local() {
        let mut h = v2([198, 51, 100, 9], 40000);
        let hl = h.len();
        h.extend(b"rest");
        let Parsed::Done { len, source } = parse(&h).unwrap() else { panic!() };
        assert_eq!((len, source), (hl, Some("198.51.100.9:40000".parse().unwrap())));
        let local = [b"\r\n\r\n\0\r\nQUIT\n".as_slice(), &[0x20, 0x00, 0, 0]].concat();
        assert_eq!(parse(&local).unwrap(), Parsed::Done { len: 16, source: None });
    }

    #[test]
    fn truncated_headers_are_incomplete() {
        assert_eq!(parse(b"PROXY TCP4 203.0.113.7 10.0").unwrap(), Parsed::Incomplete);
        assert_eq!(parse(b"PRO").unwrap(), Parsed::Incomplete);
        let h = v2([1, 2, 3, 4], 1);
        assert_eq!(parse(&h[..20]).unwrap(), Parsed::Incomplete);
        assert_eq!(parse(&h[..5]).unwrap(), Parsed::Incomplete);
    }

    #[test]
    fn garbage_is_refused_at_once() {
        for g in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"PROXY TCP4 nope 10.0.0.1 1 2\r\n",
            b"PROXY SCTP 1.2.3.4 1.2.3.4 1 2\r\n",
        ] {
            assert!(matches!(parse(g), Err(ProxyHeaderError::Invalid)), "{g:?}");
        }
    }

    #[tokio::test]
    async fn read_header_keeps_what_follows_and_bounds_the_wait() {
        let mut input: &[u8] = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET /";
        let (src, rest) = read_header(&mut input).await.unwrap();
        assert_eq!(src, Some("203.0.113.7:51000".parse().unwrap()));
        assert_eq!(rest, b"GET /");
        let mut cut: &[u8] = b"PROXY TCP4 203.0.113.7";
        assert!(matches!(read_header(&mut cut).await, Err(ProxyHeaderError::Truncated)));
        let long = [b"PROXY ".as_slice(), &[b'1'; 5000]].concat();
        let mut long: &[u8] = &long;
        assert!(matches!(read_header(&mut long).await, Err(ProxyHeaderError::TooLong | ProxyHeaderError::Invalid)));
    }
}
