//! Listeners are adapters: plain TCP, TLS and the PROXY protocol wrap the accepted socket and
//! hand the proxy the same thing — a stream, the client address, and whether the client
//! connection is secure. Everything after that ([`super::server`], [`super::forward`]) is shared.
//!
//! The work before the first request (PROXY header, TLS handshake) runs in the connection's own
//! task, bounded by the handshake timeout, so a slow or broken client never holds up the accept
//! loop or another connection.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::Proxy;
use super::headers::ClientIp;
use crate::metrics::Metrics;

/// The peers whose `X-Forwarded-*` headers and PROXY protocol header are believed
/// (`--trusted-proxies`); empty by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Whether `ip` is one of them (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// Whether no peer is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::str::FromStr for TrustedProxies {
    type Err = String;

    /// `10.0.0.0/8,192.168.1.7,fd00::/8`: CIDRs or single addresses, comma-separated.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net = match part.parse::<IpNet>() {
                Ok(n) => n,
                Err(_) => match part.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => return Err(format!("{part:?} is not a CIDR (10.0.0.0/8) or an IP address")),
                },
            };
            nets.push(net.trunc());
        }
        Ok(TrustedProxies(nets))
    }
}

/// A socket whose first bytes were already read (past a PROXY header): they are served first.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` read before it.
    pub fn new(inner: S, prefix: Vec<u8>) -> Self {
        Prefixed { prefix, pos: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            buf.put_slice(&self.prefix[self.pos..self.pos + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The client connection as the proxy serves it: plain or TLS, over TCP.
#[derive(Debug)]
pub enum ClientStream {
    /// Plain TCP.
    Plain(Prefixed<TcpStream>),
    /// TLS over TCP.
    Tls(Box<TlsStream<Prefixed<TcpStream>>>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            ClientStream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            ClientStream::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, data))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// What one listener does to an accepted socket before HTTP starts.
#[derive(Clone)]
pub struct Edge {
    tls: Option<TlsAcceptor>,
    proxy_protocol: bool,
    trusted: Option<Arc<TrustedProxies>>,
    handshake_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge").field("tls", &self.tls.is_some()).field("proxy_protocol", &self.proxy_protocol).finish()
    }
}

impl Edge {
    /// The plain listener of `proxy`: PROXY protocol if its settings say so.
    pub fn plain(proxy: &Arc<Proxy>) -> Edge {
        Edge::new(proxy, None, proxy.settings.proxy_protocol)
    }

    /// The TLS listener of `proxy`, certificates from its snapshot.
    pub fn tls(proxy: &Arc<Proxy>) -> Result<Edge, rustls::Error> {
        let cfg = super::tls::server_config(Arc::clone(proxy))?;
        Ok(Edge::new(proxy, Some(TlsAcceptor::from(cfg)), proxy.settings.tls_proxy_protocol))
    }

    fn new(proxy: &Arc<Proxy>, tls: Option<TlsAcceptor>, proxy_protocol: bool) -> Edge {
        let t = &proxy.settings.trusted_proxies;
        Edge {
            tls,
            proxy_protocol,
            trusted: (!t.is_empty()).then(|| Arc::new(t.clone())),
            handshake_timeout: proxy.settings.handshake_timeout,
            metrics: Arc::clone(proxy.metrics()),
        }
    }

    /// Turns an accepted socket into what the proxy serves, or `None` when the connection must
    /// be closed (bad or untrusted PROXY header, failed or slow handshake: counted and logged).
    pub async fn accept(&self, tcp: TcpStream, peer: SocketAddr) -> Option<(ClientStream, ClientIp)> {
        if self.tls.is_none() && !self.proxy_protocol {
            return Some((ClientStream::Plain(Prefixed::new(tcp, Vec::new())), self.client(peer.ip(), false)));
        }
        match tokio::time::timeout(self.handshake_timeout, self.handshake(tcp, peer)).await {
            Ok(accepted) => accepted,
            Err(_) => {
                self.reject(if self.tls.is_some() { "timeout" } else { "proxy_timeout" }, peer, "too slow");
                None
            }
        }
    }

    async fn handshake(&self, mut tcp: TcpStream, peer: SocketAddr) -> Option<(ClientStream, ClientIp)> {
        let mut ip = peer.ip();
        let mut prefix = Vec::new();
        if self.proxy_protocol {
            if !self.trusted.as_ref().is_some_and(|t| t.contains(ip)) {
                self.reject("proxy_untrusted_peer", peer, "PROXY protocol from a peer not in --trusted-proxies");
                return None;
            }
            match super::proxy_protocol::read_header(&mut tcp).await {
                Ok((source, rest)) => {
                    ip = source.map_or(ip, |s| s.ip());
                    prefix = rest;
                }
                Err(e) => {
                    let reason = match e {
                        super::proxy_protocol::ProxyHeaderError::Invalid => "proxy_invalid",
                        super::proxy_protocol::ProxyHeaderError::Truncated => "proxy_truncated",
                        super::proxy_protocol::ProxyHeaderError::TooLong => "proxy_too_long",
                        super::proxy_protocol::ProxyHeaderError::Io(_) => "proxy_io",
                    };
                    self.reject(reason, peer, &e.to_string());
                    return None;
                }
            }
        }
        let io = Prefixed::new(tcp, prefix);
        let Some(acceptor) = &self.tls else {
            return Some((ClientStream::Plain(io), self.client(ip, false)));
        };
        match acceptor.accept(io).await {
            Ok(s) => Some((ClientStream::Tls(Box::new(s)), self.client(ip, true))),
            Err(e) => {
                self.reject(super::tls::handshake_error_reason(&e), peer, &e.to_string());
                None
            }
        }
    }

    fn client(&self, ip: IpAddr, secure: bool) -> ClientIp {
        let trusted = self.trusted.as_ref().filter(|t| t.contains(ip)).cloned();
        ClientIp::new(ip).secure(secure).trusting(trusted)
    }

    /// Counts and logs a connection closed before HTTP. `reason` is a bounded label: TLS reasons
    /// go to `routeid_tls_handshake_errors_total`, PROXY ones to
    /// `routeid_proxy_protocol_rejected_total`.
    fn reject(&self, reason: &'static str, peer: SocketAddr, detail: &str) {
        if let Some(r) = reason.strip_prefix("proxy_") {
            self.metrics.proxy_protocol_rejected.with_label_values(&[r]).inc();
        } else {
            self.metrics.tls_handshake_errors.with_label_values(&[reason]).inc();
        }
        tracing::debug!(%peer, reason, detail, "connection closed before its first request");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_parse_and_match() {
        let t: TrustedProxies = "10.0.0.0/8, 192.168.1.7 ,fd00::/8".parse().unwrap();
        assert!(t.contains("10.1.2.3".parse().unwrap()));
        assert!(t.contains("::ffff:10.1.2.3".parse().unwrap()), "IPv4-mapped");
        assert!(t.contains("192.168.1.7".parse().unwrap()));
        assert!(!t.contains("192.168.1.8".parse().unwrap()));
        assert!(t.contains("fd00::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("".parse::<TrustedProxies>().unwrap().is_empty());
    }

    #[tokio::test]
    async fn prefixed_serves_its_prefix_first() {
        use tokio::io::AsyncReadExt;
        let mut p = Prefixed::new(&b" world"[..], b"hello".to_vec());
        let mut s = String::new();
        p.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello world");
    }
}
