//! TLS fixtures: certificates made in the test (rcgen, ECDSA P-256), Secret documents, and a
//! real rustls client that reports which certificate the server showed and which protocol ALPN
//! chose.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use routeid::proxy::tls::TlsData;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A certificate and its key, made for the test.
#[derive(Clone)]
pub struct TestCert {
    pub data: TlsData,
    pub der: Vec<u8>,
}

impl TestCert {
    /// A self-signed ECDSA P-256 certificate for `names`.
    pub fn new(names: &[&str]) -> TestCert {
        let params = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let c = params.self_signed(&key).unwrap();
        TestCert { data: TlsData::new(c.pem().into_bytes(), key.serialize_pem().into_bytes()), der: c.der().to_vec() }
    }

    /// A `kind: Secret` document with this certificate in `stringData`.
    pub fn secret_yaml(&self, namespace: &str, name: &str) -> String {
        let indent =
            |b: &[u8]| String::from_utf8(b.to_vec()).unwrap().lines().map(|l| format!("    {l}\n")).collect::<String>();
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(&self.data.crt),
            indent(&self.data.key)
        )
    }
}

/// Accepts any server certificate: the tests check which one was shown, by its bytes.
#[derive(Debug)]
struct AnyCert;

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// A rustls client offering `alpn`; `sni: false` sends no server name.
pub fn client_config(alpn: &[&[u8]], sni: bool) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg.enable_sni = sni;
    Arc::new(cfg)
}

/// What one HTTPS exchange showed.
#[derive(Debug)]
pub struct Shown {
    /// The leaf certificate the server presented.
    pub cert: Vec<u8>,
    /// The protocol ALPN chose.
    pub alpn: Option<Vec<u8>>,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// A TLS handshake to `addr` naming `sni` (`None`: no SNI), then one `GET path` with `Host: host`
/// over HTTP/2 or HTTP/1.1, whichever ALPN chose.
pub async fn https_get(
    addr: SocketAddr,
    sni: Option<&str>,
    alpn: &[&[u8]],
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Shown, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.unwrap_or("no-sni.invalid").to_owned()).map_err(|e| e.to_string())?;
    let tls =
        TlsConnector::from(client_config(alpn, sni.is_some())).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    let cert = conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let h2 = alpn.as_deref() == Some(b"h2");
    let mut b = Request::builder().uri(if h2 { format!("https://{host}{path}") } else { path.to_owned() });
    if !h2 {
        b = b.header("host", host);
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::new())).unwrap();
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Shown { cert, alpn, status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// Only the handshake: the certificate shown, or the error.
pub async fn handshake(addr: SocketAddr, sni: Option<&str>) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.unwrap_or("no-sni.invalid").to_owned()).map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(client_config(&[b"http/1.1"], sni.is_some()))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default())
}

/// A test CA and the PEM of its certificate (what a `ca.crt` holds).
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub pem: Vec<u8>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = params.self_signed(&key).unwrap().pem().into_bytes();
        TestCa { issuer: rcgen::Issuer::new(params, key), pem }
    }

    /// A leaf certificate for `names`, signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> TlsData {
        let params = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let c = params.signed_by(&key, &self.issuer).unwrap();
        TlsData::new(c.pem().into_bytes(), key.serialize_pem().into_bytes())
    }

    /// A CA-only Secret's data.
    pub fn secret_data(&self) -> TlsData {
        TlsData { crt: Vec::new(), key: Vec::new(), ca: Some(self.pem.clone()) }
    }
}

/// A member that speaks only HTTPS with `cert`, answering `route=<route> proto=<X-Forwarded-Proto>`.
pub async fn https_member(route: &'static str, cert: &TlsData) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use hyper::service::service_fn;
    use rustls_pki_types::pem::PemObject;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&cert.crt).collect::<Result<_, _>>().unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&cert.key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let proto =
                        req.headers().get("x-forwarded-proto").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(format!(
                        "route={route} proto={proto}"
                    )))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    (addr, task)
}
