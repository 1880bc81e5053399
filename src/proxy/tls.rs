//! TLS at the edge: certificates from `kubernetes.io/tls` Secrets, chosen by SNI.
//!
//! - A Secret is parsed once, when it changes ([`Certificates::apply`]): PEM chain and key
//!   (PKCS#8, PKCS#1 RSA, SEC1 EC), key checked against the certificate. A Secret that breaks
//!   keeps its last good certificate serving, and the pools that name it are told why.
//! - At every publication the SNI store ([`CertStore`]) is rebuilt from the pools' `frontend.tls`
//!   entries and swapped in with the routing table: one snapshot, so a handshake and the
//!   requests after it see the same generation. A pool names Secrets of its own namespace only,
//!   and only for hosts it serves, so one tenant's certificate is never shown for another's host.
//! - [`SniResolver`] answers rustls from the current snapshot: exact host, then the longest
//!   wildcard that covers one label, then the `--default-tls-secret`; nothing else. An exact host
//!   that another namespace's pool lists never gets this namespace's wildcard. Without a match rustls ends the
//!   handshake with a fatal alert (`access_denied`: rustls offers no hook for RFC 6066's
//!   `unrecognized_name`).
//!
//! Error texts name the Secret and what is wrong with it, never its content.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::Proxy;
use crate::core::config::HostMatch;
use crate::core::{PoolId, RoutingTable};
use crate::metrics::Metrics;

/// A Secret by namespace and name (`--default-tls-secret web/default-cert`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl SecretRef {
    /// A reference from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        SecretRef { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for SecretRef {
    type Err = String;

    /// `namespace/name`, as `--default-tls-secret` takes it.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(SecretRef::new(ns, name))
            }
            _ => Err(format!("{s:?} is not namespace/name")),
        }
    }
}

/// The PEM fields of a Secret: a TLS Secret's certificate and key, and `ca.crt` when present.
/// Its `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsData {
    /// `tls.crt`: the certificate chain, leaf first (empty in a CA-only Secret).
    pub crt: Vec<u8>,
    /// `tls.key`: the private key (empty in a CA-only Secret).
    pub key: Vec<u8>,
    /// `ca.crt`: CA certificates that verify members (`backend.tls.caSecretName`).
    pub ca: Option<Vec<u8>>,
}

impl TlsData {
    /// A serving certificate and key.
    pub fn new(crt: Vec<u8>, key: Vec<u8>) -> Self {
        TlsData { crt, key, ca: None }
    }
}

impl fmt::Debug for TlsData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsData { .. }")
    }
}

impl TlsData {
    /// Reads a Secret of type `kubernetes.io/tls` (`data`, or `stringData` as a standalone file
    /// may carry it), or a Secret of another type that holds only `ca.crt`.
    pub fn from_secret(s: &k8s_openapi::api::core::v1::Secret) -> Result<TlsData, CertError> {
        let ty = s.type_.as_deref().unwrap_or("Opaque");
        let empty = BTreeMap::new();
        let data = s.data.as_ref().unwrap_or(&empty);
        let field = |k: &'static str| -> Result<Vec<u8>, CertError> {
            if let Some(v) = data.get(k) {
                return Ok(v.0.clone());
            }
            match s.string_data.as_ref().and_then(|d| d.get(k)) {
                Some(v) => Ok(v.as_bytes().to_vec()),
                None => Err(CertError::MissingField(k)),
            }
        };
        let ca = field("ca.crt").ok();
        if ty != "kubernetes.io/tls" {
            return match ca {
                Some(ca) => Ok(TlsData { crt: Vec::new(), key: Vec::new(), ca: Some(ca) }),
                None => Err(CertError::WrongType(ty.chars().take(64).collect())),
            };
        }
        Ok(TlsData { crt: field("tls.crt")?, key: field("tls.key")?, ca })
    }
}

/// Why a Secret cannot serve. The texts name what is wrong, never the Secret's content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// No such Secret in the pool's namespace.
    #[error("the Secret does not exist in the pool's namespace")]
    Missing,
    /// Its watch has not listed it yet: not known to be missing, so no warning is due.
    #[error("the Secret has not been read yet")]
    Pending,
    /// Not a `kubernetes.io/tls` Secret.
    #[error("its type is {0:?}, not kubernetes.io/tls")]
    WrongType(String),
    /// `tls.crt` or `tls.key` absent.
    #[error("{0} is missing")]
    MissingField(&'static str),
    /// No readable PEM certificate.
    #[error("tls.crt holds no readable PEM certificate")]
    BadCertificate,
    /// No readable PEM private key.
    #[error("tls.key holds no readable PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)")]
    BadKey,
    /// A key of a kind the TLS library cannot sign with.
    #[error("tls.key is a private key of an unsupported kind")]
    UnsupportedKey,
    /// The key is not the certificate's.
    #[error("tls.key does not belong to the certificate in tls.crt")]
    KeyMismatch,
    /// No usable CA certificate.
    #[error("ca.crt holds no readable PEM CA certificate")]
    BadCa,
}

impl CertError {
    /// A bounded `CamelCase` reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            CertError::Missing => "SecretNotFound",
            CertError::Pending => "SecretPending",
            CertError::WrongType(_) => "SecretWrongType",
            CertError::MissingField(_) => "SecretFieldMissing",
            CertError::BadCertificate => "InvalidCertificate",
            CertError::BadKey | CertError::UnsupportedKey => "InvalidKey",
            CertError::KeyMismatch => "KeyMismatch",
            CertError::BadCa => "InvalidCA",
        }
    }
}

/// A certificate ready to serve, and when it expires.
#[derive(Clone, Debug)]
pub struct LoadedCert {
    /// The chain and signing key rustls serves.
    pub key: Arc<CertifiedKey>,
    /// The leaf's `notAfter`, Unix seconds.
    pub not_after: Option<i64>,
}

/// Parses a PEM chain and key and checks that they belong together.
pub fn load_pem(data: &TlsData) -> Result<LoadedCert, CertError> {
    if data.crt.is_empty() && data.key.is_empty() {
        return Err(CertError::MissingField("tls.crt"));
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&data.crt).collect::<Result<_, _>>().map_err(|_| CertError::BadCertificate)?;
    let leaf = chain.first().ok_or(CertError::BadCertificate)?;
    let not_after = not_after(leaf).ok_or(CertError::BadCertificate)?;
    let key = PrivateKeyDer::from_pem_slice(&data.key).map_err(|_| CertError::BadKey)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|_| CertError::UnsupportedKey)?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => return Err(CertError::KeyMismatch),
    }
    Ok(LoadedCert { key: Arc::new(certified), not_after: Some(not_after) })
}

/// One DER element: tag, content, what follows.
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&len, rest) = rest.split_first()?;
    let (len, rest) = if len < 0x80 {
        (usize::from(len), rest)
    } else {
        let n = usize::from(len & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |a, &b| (a << 8) | usize::from(b)), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The certificate's `notAfter` in Unix seconds (RFC 5280 §4.1: Certificate → TBSCertificate
/// → [version], serial, signature, issuer, validity). A few lines of DER walking rather than
/// an X.509 crate for one field.
fn not_after(cert: &[u8]) -> Option<i64> {
    let (0x30, cert, _) = der(cert)? else { return None };
    let (0x30, tbs, _) = der(cert)? else { return None };
    let (tag, _, mut rest) = der(tbs)?;
    if tag != 0xa0 {
        rest = tbs; // no explicit version: the serial comes first
    }
    for _ in 0..3 {
        rest = der(rest)?.2;
    }
    let (0x30, validity, _) = der(rest)? else { return None };
    let (tag, time, _) = der(der(validity)?.2)?;
    let t = std::str::from_utf8(time).ok()?.strip_suffix('Z')?;
    let (year, t) = match tag {
        0x17 => {
            let yy: i64 = t.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, t.get(2..)?)
        }
        0x18 => (t.get(..4)?.parse().ok()?, t.get(4..)?),
        _ => return None,
    };
    let num = |i: usize| -> Option<i64> { t.get(i..i + 2)?.parse().ok() };
    let (mo, d, h, mi, s) = (num(0)?, num(2)?, num(4)?, num(6)?, num(8)?);
    Some(days_from_civil(year, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The SNI store of one snapshot.
#[derive(Debug, Default)]
pub struct CertStore {
    /// Exact hosts. `None`: a host of the routing table that no certificate of its own tenant
    /// covers; it gets the default, never another tenant's wildcard.
    exact: HashMap<String, Option<Arc<CertifiedKey>>>,
    /// `.example.com` suffixes, longest first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    /// The certificate for a client's server name: exact, then the longest wildcard that covers
    /// exactly one label in front (RFC 6125 §6.4.3: clients accept no more), then the default.
    /// No name, or an unknown one, gets the default only.
    pub fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let lowered;
            let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                lowered = name.to_ascii_lowercase();
                lowered.as_str()
            } else {
                name
            };
            if let Some(k) = self.exact.get(name) {
                return k.clone().or_else(|| self.default.clone());
            }
            if let Some((_, k)) = self.wildcard(name) {
                return Some(Arc::clone(k));
            }
        }
        self.default.clone()
    }

    /// The longest wildcard entry that covers `name` (lower case) with one label.
    fn wildcard(&self, name: &str) -> Option<&(String, Arc<CertifiedKey>)> {
        self.wildcard.iter().find(|(s, _)| one_label_under(name, s))
    }

    /// Whether no certificate at all can be served.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.default.is_none()
    }
}

/// What one publication made of the pools' TLS entries.
#[derive(Debug, Default)]
pub struct TlsSnapshot {
    /// The SNI store.
    pub store: CertStore,
    /// Per pool that names a Secret: what is wrong (empty when all is well). Pools without TLS
    /// entries are absent.
    pub problems: HashMap<PoolId, Vec<TlsProblem>>,
    /// `Strict-Transport-Security` per pool, index-aligned with the table, rendered once.
    pub hsts: Vec<Option<http::HeaderValue>>,
    /// How each pool reaches its members, index-aligned with the table.
    pub backend: Vec<UpstreamTls>,
}

/// Why a pool's certificate is not what it asked for (a `TLSReady=False` condition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsProblem {
    /// A bounded `CamelCase` reason.
    pub reason: &'static str,
    /// Which Secret or host, and what is wrong; never Secret content.
    pub message: String,
}

#[derive(Debug, Default)]
struct SecretState {
    serving: Option<LoadedCert>,
    error: Option<CertError>,
    /// From `ca.crt`: roots that verify members, or why not.
    ca: Option<Result<Arc<rustls::RootCertStore>, CertError>>,
}

/// Parses `ca.crt` into trust anchors.
pub fn load_ca(pem: &[u8]) -> Result<Arc<rustls::RootCertStore>, CertError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem) {
        roots.add(c.map_err(|_| CertError::BadCa)?).map_err(|_| CertError::BadCa)?;
    }
    if roots.is_empty() {
        return Err(CertError::BadCa);
    }
    Ok(Arc::new(roots))
}

/// How a pool's requests reach its members.
#[derive(Clone, Debug, Default)]
pub enum UpstreamTls {
    /// Plain HTTP.
    #[default]
    Plain,
    /// HTTPS with this client configuration and server name (`None`: the member's IP).
    Tls {
        /// Verifies the members against the pool's CA (or not at all, when asked).
        config: Arc<rustls::ClientConfig>,
        /// `backend.tls.serverName`.
        server_name: Option<rustls_pki_types::ServerName<'static>>,
    },
    /// HTTPS was asked for but its CA is not available: requests are answered 503 by routeid
    /// rather than sent in clear or blamed on the members.
    Unavailable,
}

/// Every Secret the proxy knows, parsed, with its last good certificate. Changed only on
/// publication and Secret events, never on the request path.
#[derive(Debug, Default)]
pub struct Certificates {
    secrets: HashMap<SecretRef, SecretState>,
    default: Option<SecretRef>,
}

impl Certificates {
    /// The Secret that serves clients with no or an unknown server name.
    pub fn set_default(&mut self, default: Option<SecretRef>) {
        self.default = default;
    }

    /// The default Secret, if any.
    pub fn default_secret(&self) -> Option<&SecretRef> {
        self.default.as_ref()
    }

    /// Records a Secret's new content, or why there is none; a broken Secret keeps its last good
    /// certificate. Returns the problem, if any, for logging.
    pub fn apply(&mut self, r: &SecretRef, data: Result<&TlsData, CertError>, metrics: &Metrics) -> Option<CertError> {
        let state = self.secrets.entry(r.clone()).or_default();
        let ca = match &data {
            Ok(d) => d.ca.as_deref().map_or(Err(CertError::MissingField("ca.crt")), load_ca),
            Err(e) => Err(e.clone()),
        };
        let ca_error = ca.as_ref().err().cloned();
        // Keep the last good CA on any error, as the last good certificate.
        if ca.is_ok() || !state.ca.as_ref().is_some_and(|c| c.is_ok()) {
            state.ca = Some(ca);
        }
        if let Ok(d) = &data
            && d.crt.is_empty()
            && d.key.is_empty()
        {
            // A CA-only Secret serves no certificate; only its CA can be wrong.
            if state.error == Some(CertError::Pending) {
                state.error = None;
            }
            return ca_error;
        }
        if data.as_ref().err() == Some(&CertError::Pending) {
            if state.serving.is_none() && state.error.is_none() {
                state.error = Some(CertError::Pending);
            }
            return None;
        }
        match data.and_then(load_pem) {
            Ok(c) => {
                if let Some(t) = c.not_after {
                    metrics.tls_expiry.with_label_values(&[&r.namespace, &r.name]).set(t as f64);
                }
                state.serving = Some(c);
                state.error = None;
            }
            Err(e) => state.error = Some(e),
        }
        state.error.clone()
    }

    /// Forgets a Secret entirely (no pool names it any more, or the standalone file dropped it).
    pub fn forget(&mut self, r: &SecretRef, metrics: &Metrics) {
        if self.secrets.remove(r).is_some() {
            let _ = metrics.tls_expiry.remove_label_values(&[&r.namespace, &r.name]);
        }
    }

    /// Why a known Secret serves no certificate (`None`: it serves one, has not been read yet,
    /// or is not known). A Secret that broke after a good certificate keeps serving that one.
    pub fn problem(&self, r: &SecretRef) -> Option<&CertError> {
        let s = self.secrets.get(r)?;
        if s.serving.is_some() {
            return None;
        }
        s.error.as_ref().filter(|e| **e != CertError::Pending)
    }

    /// The Secrets known (parsed or not).
    pub fn known(&self) -> impl Iterator<Item = &SecretRef> {
        self.secrets.keys()
    }

    /// Builds the SNI store for `table`'s pools (older first: the older pool's certificate wins
    /// a host two pools name). A certificate is never placed on a host that routes only to
    /// other namespaces, and an exact host of the table is never served another namespace's
    /// wildcard: it gets the default instead.
    pub fn build(&self, table: &RoutingTable) -> TlsSnapshot {
        let hsts = table
            .pools()
            .iter()
            .map(|p| p.config.hsts.as_deref().and_then(|v| http::HeaderValue::from_str(v).ok()))
            .collect();
        let mut out = TlsSnapshot { hsts, ..TlsSnapshot::default() };
        out.backend = table.pools().iter().map(|p| self.upstream(p, &mut out.problems)).collect();
        let listed = exact_hosts(table);
        let mut claimed: HashMap<&HostMatch, &PoolId> = HashMap::new();
        for pool in table.pools() {
            let id = &pool.config.id;
            if pool.config.tls.is_empty() {
                continue;
            }
            let problems = out.problems.entry(id.clone()).or_default();
            for entry in &pool.config.tls {
                let r = SecretRef::new(entry.namespace.as_deref().unwrap_or(&id.namespace), &entry.secret_name);
                let Some(key) = self.usable(&r, problems) else { continue };
                for host in &entry.hosts {
                    if let HostMatch::Exact(h) = host
                        && !routes_to_namespace(table, &listed, h, pool)
                    {
                        problems.push(TlsProblem {
                            reason: "HostOfAnotherNamespace",
                            message: format!(
                                "host {h} is served by pools of other namespaces; not served with Secret {r}"
                            ),
                        });
                        continue;
                    }
                    match claimed.get(host) {
                        Some(owner) if *owner != id => {
                            problems.push(TlsProblem {
                                reason: "HostCertificateConflict",
                                message: format!("host {} already has a certificate from pool {owner}", show(host)),
                            });
                            continue;
                        }
                        Some(_) => continue,
                        None => {}
                    }
                    claimed.insert(host, id);
                    match host {
                        HostMatch::Exact(h) => {
                            out.store.exact.insert(h.clone(), Some(Arc::clone(&key)));
                        }
                        HostMatch::Wildcard(s) => out.store.wildcard.push((s.clone(), Arc::clone(&key))),
                    }
                }
            }
        }
        out.store.wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        shield_exact_hosts(&mut out.store, &listed, &claimed);
        if let Some(d) = &self.default {
            out.store.default = self.secrets.get(d).and_then(|s| s.serving.as_ref()).map(|c| Arc::clone(&c.key));
        }
        out
    }

    /// How `pool` reaches its members, noting a missing CA in `problems`. The client
    /// configuration is shared per setting (CA roots, `insecureSkipVerify`, `serverName`) and
    /// across publications: a pooled member connection is only reused under the very
    /// configuration it was made with, which then only changes when the setting does, and
    /// rustls's session cache survives EndpointSlice changes.
    fn upstream(&self, pool: &crate::core::Pool, problems: &mut HashMap<PoolId, Vec<TlsProblem>>) -> UpstreamTls {
        /// By (address of the CA roots, 0 for `insecureSkipVerify`; server name). The entry
        /// holds the roots, so their address cannot be reused by other roots while it exists.
        type Key = (usize, Option<rustls_pki_types::ServerName<'static>>);
        type Configs = HashMap<Key, (Option<Arc<rustls::RootCertStore>>, Arc<rustls::ClientConfig>)>;
        static CONFIGS: std::sync::Mutex<Option<Configs>> = std::sync::Mutex::new(None);
        /// Size at which entries nothing uses any more start being dropped.
        const PRUNE_FROM: usize = 64;

        let Some(t) = &pool.config.backend_tls else { return UpstreamTls::Plain };
        let id = &pool.config.id;
        problems.entry(id.clone()).or_default(); // TLSReady is reported for this pool
        let server_name =
            t.server_name.as_deref().and_then(|n| rustls_pki_types::ServerName::try_from(n.to_owned()).ok());
        let roots = if t.insecure_skip_verify {
            None
        } else {
            let Some(name) = &t.ca_secret_name else { return UpstreamTls::Unavailable };
            let r = SecretRef::new(&id.namespace, name);
            let ca = self.secrets.get(&r).and_then(|s| s.ca.clone()).unwrap_or(Err(CertError::Missing));
            match ca {
                Ok(roots) => Some(roots),
                Err(e) => {
                    let message = format!("backend.tls CA Secret {r}: {e}; requests are answered 503");
                    problems.entry(id.clone()).or_default().push(TlsProblem { reason: e.reason(), message });
                    return UpstreamTls::Unavailable;
                }
            }
        };
        let key = (roots.as_ref().map_or(0, |r| Arc::as_ptr(r) as usize), server_name.clone());
        // Only publications take this lock, never a request.
        let mut configs = CONFIGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let configs = configs.get_or_insert_with(HashMap::new);
        if let Some((_, config)) = configs.get(&key) {
            return UpstreamTls::Tls { config: Arc::clone(config), server_name };
        }
        let made = match &roots {
            None => client_config_any(),
            Some(r) => client_config(Arc::clone(r)),
        };
        let Ok(config) = made else { return UpstreamTls::Unavailable };
        // Each time the cache doubles, the configurations no snapshot or connection holds go.
        if configs.len() >= PRUNE_FROM && configs.len().is_power_of_two() {
            configs.retain(|_, (_, c)| Arc::strong_count(c) > 1);
        }
        configs.insert(key, (roots, Arc::clone(&config)));
        UpstreamTls::Tls { config, server_name }
    }

    /// The certificate `r` serves, noting in `problems` when it is broken, absent or not read
    /// yet (`SecretPending`, which the controller reports in status but sends no Event for).
    fn usable(&self, r: &SecretRef, problems: &mut Vec<TlsProblem>) -> Option<Arc<CertifiedKey>> {
        let state = self.secrets.get(r);
        let serving = state.and_then(|s| s.serving.as_ref()).map(|c| Arc::clone(&c.key));
        let error = match state {
            None => Some(&CertError::Missing),
            Some(s) => s.error.as_ref(),
        };
        if let Some(e) = error {
            let tail = if serving.is_some() { "; the last good certificate keeps serving" } else { "" };
            problems.push(TlsProblem { reason: e.reason(), message: format!("Secret {r}: {e}{tail}") });
        }
        serving
    }
}

/// Every exact host of the table's pools, with the namespaces of the pools that list it.
fn exact_hosts(table: &RoutingTable) -> HashMap<&str, Vec<&str>> {
    let mut out: HashMap<&str, Vec<&str>> = HashMap::new();
    for pool in table.pools() {
        for h in &pool.config.hosts {
            if let HostMatch::Exact(h) = h {
                let v = out.entry(h.as_str()).or_default();
                if !v.contains(&pool.config.id.namespace.as_str()) {
                    v.push(&pool.config.id.namespace);
                }
            }
        }
    }
    out
}

/// Whether `host` routes to `pool`'s namespace: a pool of that namespace lists it, or (listed by
/// none) the table sends it there. Validation already keeps a pool to its own hosts; this holds
/// even for a config that skipped it.
fn routes_to_namespace(
    table: &RoutingTable,
    listed: &HashMap<&str, Vec<&str>>,
    host: &str,
    pool: &crate::core::Pool,
) -> bool {
    let ns = pool.config.id.namespace.as_str();
    match listed.get(host) {
        Some(namespaces) => namespaces.contains(&ns),
        None => table
            .find_index(Some(host), &pool.config.path_prefix)
            .is_some_and(|i| table.pools()[i].config.id.namespace == ns),
    }
}

/// Gives each exact host that has no certificate of its own but falls under a wildcard an
/// entry of its own: the wildcard when only the wildcard's namespace lists the host, else the
/// default (`None`). Lookups stay one hash probe.
fn shield_exact_hosts(
    store: &mut CertStore,
    listed: &HashMap<&str, Vec<&str>>,
    claimed: &HashMap<&HostMatch, &PoolId>,
) {
    for (host, namespaces) in listed {
        if store.exact.contains_key(*host) {
            continue;
        }
        let Some((suffix, key)) = store.wildcard(host) else { continue };
        let owner = claimed.get(&HostMatch::Wildcard(suffix.clone())).map(|id| id.namespace.as_str());
        let same = owner.is_some_and(|o| namespaces.iter().all(|n| *n == o));
        let entry = same.then(|| Arc::clone(key));
        store.exact.insert((*host).to_owned(), entry);
    }
}

/// Whether `name` is one label in front of the `.example.com` suffix `s`.
fn one_label_under(name: &str, s: &str) -> bool {
    name.len() > s.len() && name.ends_with(s) && !name[..name.len() - s.len()].contains('.')
}

fn show(h: &HostMatch) -> String {
    match h {
        HostMatch::Exact(h) => h.clone(),
        HostMatch::Wildcard(s) => format!("*{s}"),
    }
}

/// Answers rustls from the proxy's current snapshot.
#[derive(Debug)]
pub struct SniResolver {
    proxy: Arc<Proxy>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.proxy.snapshot.load().tls.store.find(hello.server_name())
    }
}

/// The rustls configuration of the TLS listener: TLS 1.3 and 1.2 with ring, ALPN `h2` and
/// `http/1.1`, certificates from the proxy's snapshot.
pub fn server_config(proxy: Arc<Proxy>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { proxy }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The `308 Permanent Redirect` to the `https://` URL of a plain-HTTP request (ingress-nginx
/// `ssl-redirect`; 308 keeps the method and body). The port is dropped: HTTPS is on 443 in
/// front of routeid. Without a host that is a plain DNS name or address (no `user@`, no other
/// characters that would make `Location` point elsewhere) the answer is `400 Bad Request`, never
/// a redirect, and the request is not served in clear either. Always `Some`.
pub(crate) fn https_redirect(host: Option<&str>, uri: &http::Uri) -> Option<http::Response<super::forward::ProxyBody>> {
    let bad = || {
        Some(super::forward::plain(
            http::StatusCode::BAD_REQUEST,
            "routeid: this site is served over HTTPS, and the request has no valid Host to redirect to\n",
        ))
    };
    let Some(host) = host.map(redirect_host).filter(|h| valid_redirect_host(h)) else { return bad() };
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(location) = http::HeaderValue::try_from(format!("https://{host}{pq}")) else { return bad() };
    let mut r =
        super::forward::plain(http::StatusCode::PERMANENT_REDIRECT, "routeid: this site is served over HTTPS\n");
    r.headers_mut().insert(http::header::LOCATION, location);
    Some(r)
}

/// The host of a `Host` header without its port.
fn redirect_host(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty() => h,
        _ => host,
    }
}

/// A DNS name or IPv4 address (`[A-Za-z0-9.-]+`), or a bracketed IPv6 literal.
pub(crate) fn valid_redirect_host(h: &str) -> bool {
    if let Some(inner) = h.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// A client configuration that verifies members against `roots` (TLS 1.3 and 1.2, ring).
fn client_config(roots: Arc<rustls::RootCertStore>) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// `insecureSkipVerify`: encryption without authentication of the member.
fn client_config_any() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let schemes = provider.signature_verification_algorithms.supported_schemes();
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SkipVerify(schemes)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Accepts any member certificate (`backend.tls.insecureSkipVerify: true` only).
#[derive(Debug)]
struct SkipVerify(Vec<rustls::SignatureScheme>);

impl rustls::client::danger::ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.clone()
    }
}

/// Why a handshake failed, the `reason` label of `routeid_tls_handshake_errors_total`.
pub fn handshake_error_reason(e: &std::io::Error) -> &'static str {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::General(m)) if m.contains("certificate") => "no_certificate",
        Some(rustls::Error::AlertReceived(_)) => "client_alert",
        Some(rustls::Error::PeerIncompatible(_)) | Some(rustls::Error::NoApplicationProtocol) => "incompatible",
        Some(_) => "protocol",
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "eof",
        None => "io",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str], ec: bool) -> TlsData {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 7, 15);
        let alg = if ec { &rcgen::PKCS_ECDSA_P256_SHA256 } else { &rcgen::PKCS_ED25519 };
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let c = params.self_signed(&key).unwrap();
        TlsData::new(c.pem().into_bytes(), key.serialize_pem().into_bytes())
    }

    #[test]
    fn loads_pkcs8_and_reads_not_after() {
        let c = load_pem(&cert(&["a.example.com"], true)).unwrap();
        // 2031-07-15T00:00:00Z
        assert_eq!(c.not_after, Some(1_941_840_000));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn loads_sec1_ec_and_pkcs1_rsa_keys() {
        use base64::Engine;
        let data = cert(&["a.example.com"], true);
        let PrivateKeyDer::Pkcs8(pk8) = PrivateKeyDer::from_pem_slice(&data.key).unwrap() else {
            panic!("rcgen writes PKCS#8")
        };
        // PKCS#8 = SEQUENCE { version, algorithm, OCTET STRING { SEC1 ECPrivateKey } }.
        let (_, body, _) = der(pk8.secret_pkcs8_der()).unwrap();
        let rest = der(der(body).unwrap().2).unwrap().2;
        let (tag, sec1, _) = der(rest).unwrap();
        assert_eq!(tag, 0x04);
        let b64 = base64::engine::general_purpose::STANDARD.encode(sec1);
        let pem = format!("-----BEGIN EC PRIVATE KEY-----\n{b64}\n-----END EC PRIVATE KEY-----\n");
        assert!(matches!(PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap(), PrivateKeyDer::Sec1(_)));
        load_pem(&TlsData::new(data.crt, pem.into_bytes())).unwrap();
        let rsa = TlsData::new(
            include_bytes!("testdata/rsa.crt").to_vec(),
            include_bytes!("testdata/rsa-pkcs1.key").to_vec(),
        );
        assert!(matches!(PrivateKeyDer::from_pem_slice(&rsa.key).unwrap(), PrivateKeyDer::Pkcs1(_)));
        load_pem(&rsa).unwrap();
    }

    #[test]
    fn broken_inputs_are_named_without_content() {
        let a = cert(&["a.example.com"], true);
        let b = cert(&["b.example.com"], true);
        let mismatch = TlsData::new(a.crt.clone(), b.key.clone());
        assert_eq!(load_pem(&mismatch).unwrap_err(), CertError::KeyMismatch);
        let garbage = TlsData::new(b"hello".to_vec(), a.key.clone());
        assert_eq!(load_pem(&garbage).unwrap_err(), CertError::BadCertificate);
        let nokey = TlsData::new(a.crt.clone(), b"-----BEGIN PRIVATE KEY-----\n!!\n".to_vec());
        assert_eq!(load_pem(&nokey).unwrap_err(), CertError::BadKey);
        assert_eq!(format!("{:?}", a), "TlsData { .. }");
        for e in [CertError::KeyMismatch, CertError::BadCertificate, CertError::BadKey] {
            assert!(!e.to_string().contains("BEGIN"), "{e}");
        }
    }

    #[test]
    fn store_prefers_exact_then_longest_wildcard_then_default() {
        let key = |d: &TlsData| load_pem(d).unwrap().key;
        let (e, w1, w2, d) = (
            key(&cert(&["a.example.com"], true)),
            key(&cert(&["*.example.com"], true)),
            key(&cert(&["*.eu.example.com"], true)),
            key(&cert(&["default"], true)),
        );
        let mut s = CertStore::default();
        s.exact.insert("a.example.com".into(), Some(Arc::clone(&e)));
        s.wildcard = vec![(".eu.example.com".into(), Arc::clone(&w2)), (".example.com".into(), Arc::clone(&w1))];
        let is = |got: Option<Arc<CertifiedKey>>, want: &Arc<CertifiedKey>| got.is_some_and(|g| Arc::ptr_eq(&g, want));
        assert!(is(s.find(Some("A.example.com")), &e));
        assert!(is(s.find(Some("x.eu.example.com")), &w2));
        assert!(is(s.find(Some("b.example.com")), &w1));
        assert!(s.find(Some("example.com")).is_none(), "a wildcard needs a label in front");
        assert!(s.find(Some("a.b.example.com")).is_none(), "a wildcard covers one label only");
        assert!(s.find(None).is_none());
        s.default = Some(Arc::clone(&d));
        assert!(is(s.find(Some("other.org")), &d));
        assert!(is(s.find(None), &d));
    }

    #[test]
    fn redirects_drop_the_port_and_keep_the_path() {
        let uri: http::Uri = "/a/b?x=1".parse().unwrap();
        let r = https_redirect(Some("shop.example.com:8080"), &uri).unwrap();
        assert_eq!(r.status(), 308);
        assert_eq!(r.headers()["location"], "https://shop.example.com/a/b?x=1");
        let r = https_redirect(Some("[::1]:80"), &uri).unwrap();
        assert_eq!(r.headers()["location"], "https://[::1]/a/b?x=1");
        let bad = |h: Option<&str>| https_redirect(h, &uri).map(|r| r.status());
        for h in
            [None, Some(""), Some("shop.example@evil.example"), Some("a/b"), Some("[zz]"), Some("a b"), Some(":80")]
        {
            assert_eq!(bad(h), Some(http::StatusCode::BAD_REQUEST), "{h:?}");
        }
    }

    #[test]
    fn a_broken_ca_update_keeps_the_last_good_ca_and_pending_is_no_error() {
        let metrics = Metrics::new();
        let mut c = Certificates::default();
        let r = SecretRef::new("web", "ca");
        let good = TlsData { crt: Vec::new(), key: Vec::new(), ca: Some(cert(&["ca"], true).crt) };
        assert_eq!(c.apply(&r, Err(CertError::Pending), &metrics), None, "nothing to log");
        assert_eq!(c.apply(&r, Ok(&good), &metrics), None);
        let roots = |c: &Certificates| c.secrets[&r].ca.clone().and_then(Result::ok).map(|a| Arc::as_ptr(&a));
        let before = roots(&c).expect("a CA");
        let garbage = TlsData { ca: Some(b"not pem".to_vec()), ..good.clone() };
        let no_ca = TlsData { ca: None, ..good.clone() };
        assert_eq!(c.apply(&r, Ok(&garbage), &metrics), Some(CertError::BadCa), "logged");
        assert_eq!(c.apply(&r, Ok(&no_ca), &metrics), Some(CertError::MissingField("ca.crt")));
        c.apply(&r, Err(CertError::Missing), &metrics);
        assert_eq!(roots(&c), Some(before), "the last good CA stays");
    }

    #[test]
    fn secret_refs_parse() {
        assert_eq!("web/cert".parse::<SecretRef>().unwrap(), SecretRef::new("web", "cert"));
        for bad in ["cert", "/cert", "web/", "a/b/c"] {
            assert!(bad.parse::<SecretRef>().is_err(), "{bad}");
        }
    }
}
