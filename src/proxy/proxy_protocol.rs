//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, v1 text and v2 binary), as AWS NLB and
//! HAProxy send it in front of a connection: the client's address, before any byte of the
//! client's own. This module parses both forms (a page of code: the `ppp` crate it replaces
//! pulled in an old `thiserror` for it), reads exactly one header from a socket, bounded in size,
//! and keeps whatever followed it for the next reader.

use std::net::SocketAddr;

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

/// The v1 signature.
const V1: &[u8] = b"PROXY ";
/// The v2 signature.
const V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line the specification allows, `\r\n` included.
const V1_MAX: usize = 107;

/// Parses the start of `buf` as a v1 or v2 header. Whatever cannot become a header is refused
/// as soon as it shows, not when the buffer is full.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    if buf.len() >= V2.len() && buf.starts_with(V2) {
        return parse_v2(buf);
    }
    let signature = if buf.first() == Some(&b'P') { V1 } else { V2 };
    if !signature.starts_with(&buf[..buf.len().min(signature.len())]) {
        return Err(ProxyHeaderError::Invalid);
    }
    if signature == V2 || buf.len() < V1.len() {
        return Ok(Parsed::Incomplete);
    }
    parse_v1(buf)
}

/// `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n` or `PROXY UNKNOWN ...\r\n`.
fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX { Err(ProxyHeaderError::Invalid) } else { Ok(Parsed::Incomplete) };
    };
    let line = std::str::from_utf8(&buf[V1.len()..end]).map_err(|_| ProxyHeaderError::Invalid)?;
    let fields: Vec<&str> = line.split(' ').collect();
    let source = match fields.as_slice() {
        ["UNKNOWN", ..] => None,
        [proto @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let (src, dst) = (ip(src)?, ip(dst)?);
            if src.is_ipv4() != (*proto == "TCP4") || dst.is_ipv4() != src.is_ipv4() {
                return Err(ProxyHeaderError::Invalid);
            }
            port(dport)?;
            Some(SocketAddr::new(src, port(sport)?))
        }
        _ => return Err(ProxyHeaderError::Invalid),
    };
    Ok(Parsed::Done { len: end + 2, source })
}

fn ip(s: &str) -> Result<std::net::IpAddr, ProxyHeaderError> {
    s.parse().map_err(|_| ProxyHeaderError::Invalid)
}

fn port(s: &str) -> Result<u16, ProxyHeaderError> {
    // Decimal digits only (`u16::from_str` would also take a `+`).
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProxyHeaderError::Invalid);
    }
    s.parse().map_err(|_| ProxyHeaderError::Invalid)
}

/// The binary form: signature, version and command, family and protocol, length, addresses.
fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let Some(&[ver_cmd, family, hi, lo]) = buf.get(V2.len()..V2.len() + 4) else {
        return Ok(Parsed::Incomplete);
    };
    if ver_cmd >> 4 != 2 || ver_cmd & 0x0f > 1 {
        return Err(ProxyHeaderError::Invalid);
    }
    let len = V2.len() + 4 + usize::from(u16::from_be_bytes([hi, lo]));
    let Some(header) = buf.get(..len) else { return Ok(Parsed::Incomplete) };
    let addresses = &header[V2.len() + 4..];
    let local = ver_cmd & 0x0f == 0;
    let source = match family >> 4 {
        _ if local => None,
        1 => {
            let a: [u8; 12] = addresses.get(..12).and_then(|a| a.try_into().ok()).ok_or(ProxyHeaderError::Invalid)?;
            let ip = std::net::Ipv4Addr::from([a[0], a[1], a[2], a[3]]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
        }
        2 => {
            let a: [u8; 36] = addresses.get(..36).and_then(|a| a.try_into().ok()).ok_or(ProxyHeaderError::Invalid)?;
            let mut src = [0u8; 16];
            src.copy_from_slice(&a[..16]);
            Some(SocketAddr::new(std::net::Ipv6Addr::from(src).into(), u16::from_be_bytes([a[32], a[33]])))
        }
        0 | 3 => None,
        _ => return Err(ProxyHeaderError::Invalid),
    };
    Ok(Parsed::Done { len, source })
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

    #[test]
    fn v2_ipv6_unspec_and_what_is_refused() {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.extend([0x21, 0x21, 0, 36]);
        h.extend("2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
        h.extend([0; 16]);
        h.extend([0xc3, 0x50, 1, 187]);
        let Parsed::Done { len, source } = parse(&h).unwrap() else { panic!() };
        assert_eq!((len, source), (52, Some("[2001:db8::7]:50000".parse().unwrap())));
        // TLVs after the addresses are part of the header.
        let mut tlv = v2([1, 2, 3, 4], 5);
        tlv[15] += 3;
        tlv.extend([0x04, 0, 0, b'x']);
        assert_eq!(
            parse(&tlv).unwrap(),
            Parsed::Done { len: tlv.len() - 1, source: Some("1.2.3.4:5".parse().unwrap()) }
        );
        let unspec = [b"\r\n\r\n\0\r\nQUIT\n".as_slice(), &[0x21, 0x00, 0, 0]].concat();
        assert_eq!(parse(&unspec).unwrap(), Parsed::Done { len: 16, source: None });
        let mut bad = v2([1, 2, 3, 4], 5);
        bad[12] = 0x11; // version 1 in a v2 header
        assert!(matches!(parse(&bad), Err(ProxyHeaderError::Invalid)));
        let mut bad = v2([1, 2, 3, 4], 5);
        bad[12] = 0x22; // command 2
        assert!(matches!(parse(&bad), Err(ProxyHeaderError::Invalid)));
        let mut short = v2([1, 2, 3, 4], 5);
        short[15] = 4; // INET with 4 address bytes
        short.truncate(20);
        assert!(matches!(parse(&short), Err(ProxyHeaderError::Invalid)));
    }

    #[test]
    fn v1_lines_that_are_not_headers() {
        for g in [
            &b"PROXY TCP4 203.0.113.7 10.0.0.1 +51000 443\r\n"[..],
            b"PROXY TCP4 203.0.113.7 10.0.0.1 70000 443\r\n",
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 2001:db8::7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2 3\r\n",
            b"PROXY TCP4  203.0.113.7 10.0.0.1 1 2\r\n",
            b"PROXY \xff\r\n",
            b"PROXY\r\n",
        ] {
            assert!(matches!(parse(g), Err(ProxyHeaderError::Invalid)), "{g:?}");
        }
        let no_end = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(parse(&no_end), Err(ProxyHeaderError::Invalid)));
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
