//! A fake Kubernetes API server for controller tests, spoken to by a real
//! `kube::Client` over plain HTTP on 127.0.0.1.
//!
//! What it does:
//! - an in-memory store of JSON objects keyed by group/version/resource/namespace/name, with one
//!   monotonically increasing `resourceVersion` for the whole store;
//! - LIST (namespaced and cluster-wide paths, `labelSelector` with `k`, `!k`, `k=v`, `k!=v`),
//!   always answered from the current state whatever `resourceVersion` asks (which satisfies the
//!   "not older than" semantics kube's watcher uses);
//! - WATCH as a chunked stream of JSON lines: ADDED/MODIFIED/DELETED from a history of recent
//!   events, a BOOKMARK after the backlog when `allowWatchBookmarks` is set, an ERROR event with
//!   code 410 (Gone) for a `resourceVersion` older than the history (see [`FakeApiServer::compact`]),
//!   `timeoutSeconds` honoured;
//! - GET, CREATE (keeps a given `creationTimestamp`, so tests can make a pool "older"), REPLACE
//!   (with the `resourceVersion` precondition), DELETE;
//! - PATCH: JSON merge patch; strategic merge patch treated as a merge patch (right for objects
//!   without lists, like Leases); server-side apply treated as a merge patch that creates a
//!   missing object, **plus** the one piece of field ownership leader election relies on: an
//!   apply that changes a field another field manager owns fails with 409 Conflict unless forced;
//! - the `/status` subresource for `balancerpools`, `ingresses`, `services` and the Gateway API's
//!   `gatewayclasses`, `gateways` and `httproutes`: the main endpoint ignores status, `/status`
//!   changes only status, and `metadata.generation` moves only when the spec (anything outside
//!   metadata and status) changes;
//! - works for any resource path, so Leases (coordination.k8s.io/v1) and Events (events.k8s.io/v1
//!   and core v1) need nothing special.
//!
//! What it does not do: authentication, RBAC, admission, defaulting, schema or CEL validation,
//! `fieldSelector` other than `metadata.name=NAME` (refused with 400; that one is how the
//! controller watches exactly the Secrets pools name), pagination (`limit` is ignored, everything comes in one
//! page), JSON patch, real strategic-merge list semantics, `managedFields` in responses, garbage
//! collection, finalizers, discovery documents, protobuf, HTTP/2, TLS.
//!
//! CRDs: every resource path exists, as if every CRD were installed, except the API groups
//! [`FakeApiServer::uninstall_group`] hides: those answer 404 as a server without the CRDs does,
//! until [`FakeApiServer::install_group`]. RBAC: [`FakeApiServer::forbid_group`] answers 403 for
//! a whole API group (nothing finer).
//!
//! Failure injection: [`FakeApiServer::drop_watches`] breaks every open watch mid-stream (the
//! client sees the stream cut off); [`FakeApiServer::set_unavailable`] closes every connection
//! without an answer until it is lifted; [`FakeApiServer::compact`] forgets the event
//! history, so a watch resuming from an old `resourceVersion` gets 410 Gone and must re-list;
//! [`FakeApiServer::expire_watches`] also ends every open watch with 410 Gone.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// Resources whose status is a subresource (the main endpoint ignores `status`).
const STATUS_SUBRESOURCE: &[&str] =
    &["balancerpools", "ingresses", "services", "gatewayclasses", "gateways", "httproutes"];
/// How many events the watch history keeps before older resourceVersions become "too old".
const HISTORY: usize = 10_000;

/// Where an object lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    fn new(group: &str, version: &str, resource: &str, namespace: &str, name: &str) -> Key {
        Key {
            group: group.into(),
            version: version.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// One write the server accepted, for assertions ("only one replica wrote status").
#[derive(Clone, Debug)]
pub struct Write {
    pub verb: &'static str,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: String,
    pub name: String,
    pub field_manager: Option<String>,
}

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    type_: &'static str,
    key: Key,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: HashMap<Key, Value>,
    /// Field path → manager, for server-side apply conflicts.
    owners: HashMap<Key, HashMap<String, String>>,
    history: VecDeque<Arc<Event>>,
    /// Watches from a resourceVersion below this get 410 Gone.
    oldest_rv: u64,
    writes: Vec<Write>,
}

struct State {
    store: Mutex<Store>,
    events: broadcast::Sender<Arc<Event>>,
    drop_watches: watch::Sender<u64>,
    /// Bumped to end every open watch with an ERROR event `410 Gone`.
    expire_watches: watch::Sender<u64>,
    unavailable: AtomicBool,
    /// API groups whose CRDs are "not installed": 404 for every request.
    missing_groups: Mutex<std::collections::HashSet<String>>,
    /// API groups the client may not read: 403 for every request (RBAC without them).
    forbidden_groups: Mutex<std::collections::HashSet<String>>,
    open_watches: Mutex<u64>,
    gone_served: std::sync::atomic::AtomicU64,
    missing_served: std::sync::atomic::AtomicU64,
}

/// A running fake API server; stops when dropped.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
        // Close open watches too, so clients of a dropped server see the connection go.
        self.state.drop_watches.send_modify(|g| *g += 1);
    }
}

impl FakeApiServer {
    /// Starts the server on an ephemeral 127.0.0.1 port.
    pub async fn start() -> FakeApiServer {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            store: Mutex::new(Store::default()),
            events: broadcast::channel(16_384).0,
            drop_watches: watch::channel(0).0,
            expire_watches: watch::channel(0).0,
            unavailable: AtomicBool::new(false),
            missing_groups: Mutex::new(Default::default()),
            forbidden_groups: Mutex::new(Default::default()),
            open_watches: Mutex::new(0),
            gone_served: std::sync::atomic::AtomicU64::new(0),
            missing_served: std::sync::atomic::AtomicU64::new(0),
        });
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (st, builder) = (Arc::clone(&st), builder.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = Arc::clone(&st);
                        async move {
                            if st.unavailable.load(Ordering::SeqCst) {
                                // No answer at all: hyper drops the connection.
                                return Err(std::io::Error::other("the fake API server is unreachable"));
                            }
                            Ok::<_, std::io::Error>(handle(st, req).await)
                        }
                    });
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        FakeApiServer { addr, state, task }
    }

    /// A real kube client talking to this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Breaks every open watch mid-stream (the clients see a connection error).
    pub fn drop_watches(&self) {
        self.state.drop_watches.send_modify(|g| *g += 1);
    }

    /// While `down` holds every request has its connection closed without an answer: an
    /// unreachable API server. (Not a 503: kube's client retries 503s internally for minutes,
    /// which would hide the outage from the watchers under test.)
    pub fn set_unavailable(&self, down: bool) {
        self.state.unavailable.store(down, Ordering::SeqCst);
        if down {
            self.drop_watches();
        }
    }

    /// Makes every resource of `group` answer 404, as before its CRDs are installed.
    pub fn uninstall_group(&self, group: &str) {
        self.state.missing_groups.lock().unwrap().insert(group.to_owned());
    }

    /// Answers 403 Forbidden for every resource of `group` (a service account without RBAC
    /// for it), until [`FakeApiServer::allow_group`].
    pub fn forbid_group(&self, group: &str) {
        self.state.forbidden_groups.lock().unwrap().insert(group.to_owned());
    }

    /// Lifts [`FakeApiServer::forbid_group`].
    pub fn allow_group(&self, group: &str) {
        self.state.forbidden_groups.lock().unwrap().remove(group);
    }

    /// Serves `group` again (its CRDs were installed).
    pub fn install_group(&self, group: &str) {
        self.state.missing_groups.lock().unwrap().remove(group);
    }

    /// How many 404s were answered for an uninstalled group.
    pub fn missing_group_requests(&self) -> u64 {
        self.state.missing_served.load(Ordering::SeqCst)
    }

    /// Forgets the event history: a watch from any earlier resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        let mut s = self.state.store.lock().unwrap();
        s.history.clear();
        s.oldest_rv = s.rv;
    }

    /// What an API server whose watch cache restarted does (after an etcd or API-server
    /// outage): forgets the history, so a watch resuming from an earlier resourceVersion gets
    /// 410 Gone, and ends every open watch with an ERROR event `410 Gone`. Its resourceVersion
    /// has moved on past every one a client holds (else a client that had seen the last write
    /// would resume without a 410, and the outage would not be the one asked for).
    pub fn expire_watches(&self) {
        self.state.store.lock().unwrap().rv += 1;
        self.compact();
        self.state.expire_watches.send_modify(|g| *g += 1);
    }

    /// Deletes an object behind the clients' backs (works while the server is unavailable), as
    /// a DELETE would: a DELETED event goes to the history and to open watches.
    pub fn remove(&self, group: &str, version: &str, resource: &str, ns: &str, name: &str) -> bool {
        let key = Key::new(group, version, resource, ns, name);
        let mut s = self.state.store.lock().unwrap();
        let Some(obj) = s.objects.remove(&key) else { return false };
        s.owners.remove(&key);
        s.rv += 1;
        s.emit(&self.state, "DELETED", &key, &obj);
        true
    }

    /// Number of watch streams open right now.
    pub fn open_watches(&self) -> u64 {
        *self.state.open_watches.lock().unwrap()
    }

    /// How many watches were answered 410 Gone.
    pub fn gone_served(&self) -> u64 {
        self.state.gone_served.load(Ordering::SeqCst)
    }

    /// Every accepted write so far.
    pub fn writes(&self) -> Vec<Write> {
        self.state.store.lock().unwrap().writes.clone()
    }

    /// The stored object, as JSON.
    pub fn object(&self, group: &str, version: &str, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let key = Key::new(group, version, resource, ns, name);
        self.state.store.lock().unwrap().objects.get(&key).cloned()
    }

    /// Every stored object of a resource (any version, any namespace).
    pub fn objects(&self, group: &str, resource: &str) -> Vec<Value> {
        let s = self.state.store.lock().unwrap();
        let mut v: Vec<(&Key, &Value)> =
            s.objects.iter().filter(|(k, _)| k.group == group && k.resource == resource).collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v.into_iter().map(|(_, o)| o.clone()).collect()
    }
}

// ---------------------------------------------------------------------------------------------

fn full(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

fn status_error(code: StatusCode, reason: &str, message: impl Into<String>) -> Response<Body> {
    let v = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message.into(), "reason": reason, "code": code.as_u16(),
    });
    full(code, &v)
}

/// The parsed path of a request.
struct Target {
    group: String,
    version: String,
    /// Empty for cluster-wide collection requests.
    namespace: String,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (String::new(), (*v).to_owned(), rest),
        ["apis", g, v, rest @ ..] => ((*g).to_owned(), (*v).to_owned(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => ((*ns).to_owned(), rest),
        _ => (String::new(), rest),
    };
    let resource = (*rest.first()?).to_owned();
    Some(Target {
        group,
        version,
        namespace,
        resource,
        name: rest.get(1).map(|s| (*s).to_owned()),
        subresource: rest.get(2).map(|s| (*s).to_owned()),
    })
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    let q = req.uri().query().unwrap_or("");
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(c) => {
                        out.push(c);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `k`, `!k`, `k=v`, `k==v`, `k!=v`, comma-separated (no set-based `in`/`notin`).
/// What a LIST or WATCH selects: a label selector and, optionally, one object name.
struct Selector {
    labels: String,
    name: Option<String>,
}

impl Selector {
    fn of(q: &HashMap<String, String>) -> Selector {
        let name = q.get("fieldSelector").and_then(|f| {
            let v = f.strip_prefix("metadata.name=").or_else(|| f.strip_prefix("metadata.name=="))?;
            (!v.contains(',')).then(|| v.to_owned())
        });
        Selector { labels: q.get("labelSelector").cloned().unwrap_or_default(), name }
    }

    fn matches(&self, obj: &Value) -> bool {
        let name_ok =
            self.name.as_deref().is_none_or(|n| obj.pointer("/metadata/name").and_then(Value::as_str) == Some(n));
        name_ok && labels_match(&self.labels, obj)
    }
}

fn labels_match(selector: &str, obj: &Value) -> bool {
    let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    selector.split(',').map(str::trim).filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            get(k.trim()) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            get(k.trim()) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            get(k.trim()).is_none()
        } else {
            get(term).is_some()
        }
    })
}

fn kind_of(resource: &str) -> String {
    match resource {
        "balancerpools" => "BalancerPool".into(),
        "endpointslices" => "EndpointSlice".into(),
        "leases" => "Lease".into(),
        "events" => "Event".into(),
        "pods" => "Pod".into(),
        "services" => "Service".into(),
        "ingresses" => "Ingress".into(),
        "ingressclasses" => "IngressClass".into(),
        "gatewayclasses" => "GatewayClass".into(),
        "httproutes" => "HTTPRoute".into(),
        "referencegrants" => "ReferenceGrant".into(),
        "xbackendtrafficpolicies" => "XBackendTrafficPolicy".into(),
        "customresourcedefinitions" => "CustomResourceDefinition".into(),
        other => {
            let s = other.trim_end_matches('s');
            let mut c = s.chars();
            c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
        }
    }
}

fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Leaf paths of a patch outside `apiVersion`, `kind` and `metadata` (ownership granularity).
fn leaves(v: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                if prefix.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                leaves(v, &format!("{prefix}/{k}"), out);
            }
        }
        other => out.push((prefix.to_owned(), other.clone())),
    }
}

fn spec_of(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

impl Store {
    fn emit(&mut self, state: &State, type_: &'static str, key: &Key, object: &Value) {
        let ev = Arc::new(Event { rv: self.rv, type_, key: key.clone(), object: object.clone() });
        self.history.push_back(Arc::clone(&ev));
        while self.history.len() > HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.oldest_rv = old.rv;
            }
        }
        let _ = state.events.send(ev);
    }

    fn record(&mut self, verb: &'static str, t: &Target, name: &str, q: &HashMap<String, String>) {
        self.writes.push(Write {
            verb,
            resource: t.resource.clone(),
            subresource: t.subresource.clone(),
            namespace: t.namespace.clone(),
            name: name.to_owned(),
            field_manager: q.get("fieldManager").cloned(),
        });
    }

    /// Stores `obj` under `key`, bumping resourceVersion (and generation when the spec changed).
    fn put(&mut self, state: &State, key: &Key, mut obj: Value, created: bool) -> Value {
        self.rv += 1;
        let old = self.objects.get(key).cloned();
        let meta = obj.as_object_mut().unwrap().entry("metadata").or_insert_with(|| json!({}));
        let meta = meta.as_object_mut().unwrap();
        meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        meta.insert("name".into(), json!(key.name));
        if !key.namespace.is_empty() {
            meta.insert("namespace".into(), json!(key.namespace));
        }
        match &old {
            Some(old) => {
                for f in ["uid", "creationTimestamp"] {
                    if let Some(v) = old.pointer(&format!("/metadata/{f}")) {
                        meta.insert(f.into(), v.clone());
                    }
                }
                let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
                let bump = spec_of(old) != spec_of(&obj);
                let meta = obj.as_object_mut().unwrap().get_mut("metadata").unwrap().as_object_mut().unwrap();
                meta.insert("generation".into(), json!(if bump { generation + 1 } else { generation }));
            }
            None => {
                meta.insert("uid".into(), json!(format!("uid-{}", self.rv)));
                meta.insert("generation".into(), json!(1));
                meta.entry("creationTimestamp").or_insert_with(|| json!(now_rfc3339()));
            }
        }
        let m = obj.as_object_mut().unwrap();
        m.insert("apiVersion".into(), json!(api_version(&key.group, &key.version)));
        m.insert("kind".into(), json!(kind_of(&key.resource)));
        self.objects.insert(key.clone(), obj.clone());
        self.emit(state, if created { "ADDED" } else { "MODIFIED" }, key, &obj);
        obj
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let Some(t) = parse_path(req.uri().path()) else {
        return status_error(StatusCode::NOT_FOUND, "NotFound", format!("no such path {}", req.uri().path()));
    };
    if state.missing_groups.lock().unwrap().contains(&t.group) {
        state.missing_served.fetch_add(1, Ordering::SeqCst);
        return status_error(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource");
    }
    if state.forbidden_groups.lock().unwrap().contains(&t.group) {
        return status_error(StatusCode::FORBIDDEN, "Forbidden", format!("{} is forbidden", t.resource));
    }
    let q = query(&req);
    if q.get("fieldSelector").is_some_and(|f| !f.is_empty() && Selector::of(&q).name.is_none()) {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the fake API server does only fieldSelector=metadata.name=NAME",
        );
    }
    let method = req.method().clone();
    let content_type =
        req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
    };
    match (&method, &t.name) {
        (&Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => watch(state, t, q),
        (&Method::GET, None) => list(&state, &t, &q),
        (&Method::GET, Some(name)) => {
            let key = key_of(&t, name);
            match state.store.lock().unwrap().objects.get(&key) {
                Some(o) => full(StatusCode::OK, o),
                None => not_found(&t, name),
            }
        }
        (&Method::POST, None) => create(&state, &t, &q, &body),
        (&Method::PUT, Some(name)) => replace(&state, &t, name, &q, &body),
        (&Method::PATCH, Some(name)) => patch(&state, &t, name, &q, &content_type, &body),
        (&Method::DELETE, Some(name)) => delete(&state, &t, name, &q),
        _ => status_error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", format!("{method} not supported here")),
    }
}

fn key_of(t: &Target, name: &str) -> Key {
    Key::new(&t.group, &t.version, &t.resource, &t.namespace, name)
}

fn not_found(t: &Target, name: &str) -> Response<Body> {
    status_error(StatusCode::NOT_FOUND, "NotFound", format!("{} \"{name}\" not found", t.resource))
}

fn in_scope(t: &Target, key: &Key) -> bool {
    key.group == t.group
        && key.version == t.version
        && key.resource == t.resource
        && (t.namespace.is_empty() || key.namespace == t.namespace)
}

fn list(state: &State, t: &Target, q: &HashMap<String, String>) -> Response<Body> {
    let sel = Selector::of(q);
    let s = state.store.lock().unwrap();
    let mut items: Vec<(&Key, &Value)> = s.objects.iter().filter(|(k, o)| in_scope(t, k) && sel.matches(o)).collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    let items: Vec<Value> = items.into_iter().map(|(_, o)| o.clone()).collect();
    let v = json!({
        "apiVersion": api_version(&t.group, &t.version),
        "kind": format!("{}List", kind_of(&t.resource)),
        "metadata": {"resourceVersion": s.rv.to_string()},
        "items": items,
    });
    full(StatusCode::OK, &v)
}

fn parse_body(body: &Bytes) -> Option<Value> {
    serde_json::from_slice::<Value>(body)
        .or_else(|_| serde_saphyr::from_slice::<Value>(body))
        .ok()
        .filter(Value::is_object)
}

fn bad_body() -> Response<Body> {
    status_error(StatusCode::BAD_REQUEST, "BadRequest", "the body is not a JSON object")
}

fn create(state: &State, t: &Target, q: &HashMap<String, String>, body: &Bytes) -> Response<Body> {
    let Some(obj) = parse_body(body) else { return bad_body() };
    let mut s = state.store.lock().unwrap();
    let name = match obj.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) => n.to_owned(),
        None => match obj.pointer("/metadata/generateName").and_then(Value::as_str) {
            Some(g) => format!("{g}{:05x}", s.rv + 1),
            None => return status_error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name is required"),
        },
    };
    let key = key_of(t, &name);
    if s.objects.contains_key(&key) {
        return status_error(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", t.resource),
        );
    }
    s.record("create", t, &name, q);
    let stored = s.put(state, &key, obj, true);
    full(StatusCode::CREATED, &stored)
}

fn precondition(old: &Value, new: &Value) -> Option<Response<Body>> {
    let want = new.pointer("/metadata/resourceVersion").and_then(Value::as_str)?;
    let have = old.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("");
    (!want.is_empty() && want != have).then(|| {
        status_error(
            StatusCode::CONFLICT,
            "Conflict",
            "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again",
        )
    })
}

/// Applies the status-subresource rule: the main endpoint keeps the old status, `/status`
/// changes nothing but status.
fn scope_to_subresource(t: &Target, old: &Value, mut new: Value) -> Value {
    let has_status = STATUS_SUBRESOURCE.contains(&t.resource.as_str());
    if t.subresource.as_deref() == Some("status") {
        let mut out = old.clone();
        match new.as_object_mut().and_then(|m| m.remove("status")) {
            Some(st) => {
                out.as_object_mut().unwrap().insert("status".into(), st);
            }
            None => {
                out.as_object_mut().unwrap().remove("status");
            }
        }
        out
    } else if has_status {
        let m = new.as_object_mut().unwrap();
        match old.get("status") {
            Some(st) => m.insert("status".into(), st.clone()),
            None => m.remove("status"),
        };
        new
    } else {
        new
    }
}

fn replace(state: &State, t: &Target, name: &str, q: &HashMap<String, String>, body: &Bytes) -> Response<Body> {
    let Some(obj) = parse_body(body) else { return bad_body() };
    let key = key_of(t, name);
    let mut s = state.store.lock().unwrap();
    let Some(old) = s.objects.get(&key).cloned() else { return not_found(t, name) };
    if let Some(r) = precondition(&old, &obj) {
        return r;
    }
    let new = scope_to_subresource(t, &old, obj);
    s.record("replace", t, name, q);
    let stored = s.put(state, &key, new, false);
    full(StatusCode::OK, &stored)
}

fn patch(
    state: &State,
    t: &Target,
    name: &str,
    q: &HashMap<String, String>,
    content_type: &str,
    body: &Bytes,
) -> Response<Body> {
    let apply = content_type.starts_with("application/apply-patch");
    if !apply
        && !content_type.starts_with("application/merge-patch+json")
        && !content_type.starts_with("application/strategic-merge-patch+json")
    {
        return status_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the fake API server does not do {content_type:?} patches"),
        );
    }
    let Some(p) = parse_body(body) else { return bad_body() };
    let manager = q.get("fieldManager").cloned().unwrap_or_default();
    if apply && manager.is_empty() {
        return status_error(StatusCode::BAD_REQUEST, "BadRequest", "fieldManager is required for apply patch");
    }
    let force = q.get("force").is_some_and(|f| f == "true");
    let key = key_of(t, name);
    let mut s = state.store.lock().unwrap();
    let old = match s.objects.get(&key).cloned() {
        Some(o) => o,
        None if apply => json!({"metadata": {"name": name}}),
        None => return not_found(t, name),
    };
    if let Some(r) = precondition(&old, &p) {
        return r;
    }
    let mut patch_leaves = Vec::new();
    leaves(&p, "", &mut patch_leaves);
    let owners = s.owners.entry(key.clone()).or_default();
    if apply && !force {
        for (path, v) in &patch_leaves {
            if let Some(owner) = owners.get(path)
                && owner != &manager
                && old.pointer(path) != Some(v)
            {
                return status_error(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!("Apply failed with 1 conflict: conflict with {owner:?}: {path}"),
                );
            }
        }
    }
    for (path, v) in &patch_leaves {
        if v.is_null() {
            owners.remove(path);
        } else {
            owners.insert(path.clone(), manager.clone());
        }
    }
    let mut merged = old.clone();
    merge_patch(&mut merged, &p);
    let new = scope_to_subresource(t, &old, merged);
    let created = !s.objects.contains_key(&key);
    s.record(if apply { "apply" } else { "patch" }, t, name, q);
    let stored = s.put(state, &key, new, created);
    full(if created { StatusCode::CREATED } else { StatusCode::OK }, &stored)
}

fn delete(state: &State, t: &Target, name: &str, q: &HashMap<String, String>) -> Response<Body> {
    let key = key_of(t, name);
    let mut s = state.store.lock().unwrap();
    let Some(mut obj) = s.objects.remove(&key) else { return not_found(t, name) };
    s.owners.remove(&key);
    s.rv += 1;
    let rv = s.rv;
    if let Some(m) = obj.pointer_mut("/metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), json!(rv.to_string()));
    }
    s.record("delete", t, name, q);
    s.emit(state, "DELETED", &key, &obj);
    full(StatusCode::OK, &obj)
}

fn event_line(type_: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": type_, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch(state: Arc<State>, t: Target, q: HashMap<String, String>) -> Response<Body> {
    let sel = Selector::of(&q);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = q.get("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()).unwrap_or(1800);
    let from: Option<u64> =
        q.get("resourceVersion").filter(|s| !s.is_empty() && *s != "0").and_then(|s| s.parse().ok());
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(64);
    let mut drop_rx = state.drop_watches.subscribe();
    drop_rx.mark_unchanged();
    let mut expire_rx = state.expire_watches.subscribe();
    expire_rx.mark_unchanged();
    // Snapshot the backlog and subscribe under one lock, so no event falls in between.
    let (backlog, mut sub, current_rv) = {
        let s = state.store.lock().unwrap();
        let sub = state.events.subscribe();
        let backlog: Result<Vec<Bytes>, ()> = match from {
            None => {
                let mut objs: Vec<(&Key, &Value)> =
                    s.objects.iter().filter(|(k, o)| in_scope(&t, k) && sel.matches(o)).collect();
                objs.sort_by(|a, b| a.0.cmp(b.0));
                Ok(objs.into_iter().map(|(_, o)| event_line("ADDED", o)).collect())
            }
            Some(rv) if rv < s.oldest_rv => Err(()),
            Some(rv) => Ok(s
                .history
                .iter()
                .filter(|e| e.rv > rv && in_scope(&t, &e.key) && sel.matches(&e.object))
                .map(|e| event_line(e.type_, &e.object))
                .collect()),
        };
        (backlog, sub, s.rv)
    };
    let (backlog, gone) = match backlog {
        Ok(b) => (b, false),
        Err(()) => (vec![gone_line(&state)], true),
    };
    let api_ver = api_version(&t.group, &t.version);
    let kind = kind_of(&t.resource);
    let st = Arc::clone(&state);
    *st.open_watches.lock().unwrap() += 1;
    tokio::spawn(async move {
        let _guard = WatchGuard(Arc::clone(&st));
        for line in backlog {
            if tx.send(Ok(Frame::data(line))).await.is_err() {
                return;
            }
        }
        if gone {
            return;
        }
        if bookmarks {
            let bm =
                json!({"apiVersion": api_ver, "kind": kind, "metadata": {"resourceVersion": current_rv.to_string()}});
            if tx.send(Ok(Frame::data(event_line("BOOKMARK", &bm)))).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = drop_rx.changed() => {
                    let _ = tx.send(Err("watch dropped by the fake API server".into())).await;
                    return;
                }
                _ = expire_rx.changed() => {
                    let _ = tx.send(Ok(Frame::data(gone_line(&st)))).await;
                    return;
                }
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                ev = sub.recv() => match ev {
                    Ok(ev) => {
                        if ev.rv > current_rv && in_scope(&t, &ev.key) && sel.matches(&ev.object)
                            && tx.send(Ok(Frame::data(event_line(ev.type_, &ev.object)))).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(Err("watcher lagged".into())).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

/// The ERROR event `410 Gone` ("too old resource version"), counted.
fn gone_line(state: &State) -> Bytes {
    state.gone_served.fetch_add(1, Ordering::SeqCst);
    let gone = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410,
    });
    event_line("ERROR", &gone)
}

struct WatchGuard(Arc<State>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        *self.0.open_watches.lock().unwrap() -= 1;
    }
}
