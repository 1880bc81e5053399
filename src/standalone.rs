//! Standalone mode: pools from a multi-document YAML file of `BalancerPool`s with static members,
//! and the `kubernetes.io/tls` Secrets they name (`data` base64 or `stringData`), so one file
//! works with both `kubectl apply -f` and `routeid standalone -f`.
//!
//! A bad file is refused whole, with every problem named by document, pool and field; on a
//! reload the caller keeps serving the previous table and certificates.

use std::fmt;
use std::path::Path;

use serde_json::Value;

use crate::api::BalancerPool;
use crate::api::validate::validate_static;
use crate::core::config::{PoolConfig, PoolId};
use crate::core::table::RoutingTable;
use crate::proxy::tls::{CertError, SecretRef, TlsData};

pub mod strict;

/// What a pools file holds.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The pools, in file order.
    pub pools: Vec<PoolConfig>,
    /// The TLS Secrets, each checked (it parses and its key matches its certificate).
    pub secrets: Vec<(SecretRef, Result<TlsData, CertError>)>,
}

/// Why a pools file was refused: every problem found, each naming its document.
#[derive(Debug, thiserror::Error)]
pub struct LoadError {
    /// The file.
    pub file: String,
    /// One line per problem: `document 2 (shop): spec.frontend.hosts[0]: ...`.
    pub problems: Vec<String>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not a valid pools file:", self.file)?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// Reads and validates a pools file.
pub fn load_file(path: &Path) -> Result<Vec<PoolConfig>, LoadError> {
    load(path).map(|l| l.pools)
}

/// Reads and validates a pools file with its Secrets.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| LoadError { file: file.clone(), problems: vec![format!("cannot read it: {e}")] })?;
    parse(&text).map_err(|problems| LoadError { file, problems })
}

/// Parses and validates pools from YAML text (one or more documents). The Secrets the pools
/// name need not be in the text (the caller brings certificates another way).
pub fn parse_pools(text: &str) -> Result<Vec<PoolConfig>, Vec<String>> {
    parse_with(text, false).map(|l| l.pools)
}

/// Reads a `kind: Secret` document: a `kubernetes.io/tls` Secret whose certificate serves.
fn parse_secret(value: Value, label: &str) -> Result<(SecretRef, Result<TlsData, CertError>), String> {
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(value).map_err(|e| format!("{label}: {e}"))?;
    let r = SecretRef::new(
        secret.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned()),
        secret.metadata.name.clone().unwrap_or_default(),
    );
    let data = TlsData::from_secret(&secret).and_then(|d| {
        if !d.crt.is_empty() || !d.key.is_empty() {
            crate::proxy::tls::load_pem(&d)?;
        } else if let Some(ca) = &d.ca {
            crate::proxy::tls::load_ca(ca)?;
        }
        Ok(d)
    });
    match data {
        Ok(d) => Ok((r, Ok(d))),
        Err(e) => Err(format!("{label}: Secret {r}: {e}")),
    }
}

/// Parses and validates pools and Secrets from YAML text (one or more documents); every Secret
/// a pool names must be among them.
pub fn parse(text: &str) -> Result<Loaded, Vec<String>> {
    parse_with(text, true)
}

/// Reads every document, then checks what needs them all (Secrets named, host and prefix
/// conflicts), so one run reports every problem of the file.
fn parse_with(text: &str, need_secrets: bool) -> Result<Loaded, Vec<String>> {
    let mut problems = Vec::new();
    let mut loaded = Loaded::default();
    let mut ids = Vec::new();
    for (n, doc) in documents(text) {
        match doc {
            Ok(value) => read_document(n, value, &mut ids, &mut loaded, &mut problems),
            Err(e) => problems.push(format!("document {n}: not valid YAML: {e}")),
        }
    }
    if problems.is_empty() && loaded.pools.is_empty() {
        problems.push("no BalancerPool documents".to_owned());
    }
    if need_secrets {
        missing_secrets(&loaded, &mut problems);
    }
    let (_, conflicts) = RoutingTable::build(loaded.pools.clone(), None);
    problems.extend(conflicts.into_iter().map(|c| {
        format!("pool {} claims host {} prefix {} already served by pool {}", c.loser, c.host, c.prefix, c.winner)
    }));
    if problems.is_empty() { Ok(loaded) } else { Err(problems) }
}

/// Advice to the programmer in the YAML reader's duplicate-key error, not for a user.
const LIBRARY_HINT: &str = ", set DuplicateKeyPolicy in Options if acceptable";

/// The documents of a YAML stream, numbered from 1, empty ones left out. A syntax error ends
/// the stream (YAML cannot be resynchronised after one); a document that is not a tree of
/// string-keyed maps is reported and the next one read.
fn documents(text: &str) -> Vec<(usize, Result<Value, String>)> {
    let mut reader = text.as_bytes();
    serde_saphyr::read::<_, Value>(&mut reader)
        .enumerate()
        .map(|(i, doc)| (i + 1, doc.map_err(|e| e.to_string().replace(LIBRARY_HINT, ""))))
        .filter(|(_, doc)| !matches!(doc, Ok(Value::Null)))
        .collect()
}

/// Reads one document: a BalancerPool (checked field by field against the schema, then
/// validated) or a TLS Secret.
fn read_document(n: usize, mut value: Value, ids: &mut Vec<PoolId>, loaded: &mut Loaded, problems: &mut Vec<String>) {
    let name = value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_owned();
    let label = if name.is_empty() { format!("document {n}") } else { format!("document {n} ({name})") };
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        problems.push(format!("{label}: metadata.name: is required"));
        return;
    }
    if api_version == "v1" && kind == "Secret" {
        match parse_secret(value, &label) {
            Ok((r, _)) if loaded.secrets.iter().any(|(s, _)| *s == r) => {
                problems.push(format!("{label}: another document already defines Secret {r}"));
            }
            Ok(s) => loaded.secrets.push(s),
            Err(p) => problems.push(p),
        }
        return;
    }
    if api_version != "routeid.io/v1alpha1" || kind != "BalancerPool" {
        problems.push(format!("{label}: expected apiVersion routeid.io/v1alpha1 and kind BalancerPool (or v1 Secret), found {api_version:?} / {kind:?}"));
        return;
    }
    let namespace = value.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default");
    let id = PoolId { namespace: namespace.to_owned(), name };
    let duplicate = ids.contains(&id);
    if duplicate {
        problems.push(format!("{label}: another document already defines pool {id}"));
    } else {
        ids.push(id.clone());
    }
    let strict = strict::check_pool(&mut value);
    problems.extend(strict.problems.iter().map(|p| format!("{label}: {p}")));
    if strict.unreadable {
        return;
    }
    let pool: BalancerPool = match serde_json::from_value(value) {
        Ok(p) => p,
        Err(e) => {
            if strict.problems.is_empty() {
                problems.push(format!("{label}: {e}"));
            }
            return;
        }
    };
    match validate_static(id, &pool.spec) {
        Ok(cfg) if cfg.members.is_empty() => {
            problems.push(format!("{label}: spec.backend.members: a standalone pool needs at least one member"));
        }
        Ok(cfg) if strict.problems.is_empty() && !duplicate => loaded.pools.push(cfg),
        Ok(_) => {}
        Err(errs) => problems.extend(errs.into_iter().map(|e| format!("{label}: {e}"))),
    }
}

/// Every Secret a pool names must be in the file.
fn missing_secrets(loaded: &Loaded, problems: &mut Vec<String>) {
    for p in &loaded.pools {
        let ca = p.backend_tls.as_ref().and_then(|b| b.ca_secret_name.as_deref());
        let named = p
            .tls
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("spec.frontend.tls[{i}].secretName"), t.secret_name.as_str()));
        for (field, name) in named.chain(ca.map(|n| ("spec.backend.tls.caSecretName".to_owned(), n))) {
            let r = SecretRef::new(&p.id.namespace, name);
            if !loaded.secrets.iter().any(|(s, _)| *s == r) {
                problems.push(format!(
                    "pool {}: {field}: no Secret {r} in this file (a pool uses Secrets of its own namespace)",
                    p.id
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: routeid.io/v1alpha1
kind: BalancerPool
metadata: {name: shop}
spec:
  frontend: {hosts: [shop.example.com], pathPrefix: /shop}
  backend:
    members:
      - {address: "127.0.0.1:8081", route: shop-0}
      - {address: "127.0.0.1:8082", route: shop-1, loadFactor: 2}
---
apiVersion: routeid.io/v1alpha1
kind: BalancerPool
metadata: {name: api, namespace: web}
spec:
  backend:
    members: [{address: "[::1]:9000", route: api-0}]
"#;

    #[test]
    fn the_annotated_example_loads() {
        let pools = parse_pools(include_str!("../examples/pools.yaml")).unwrap();
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].id.to_string(), "default/shop");
        assert_eq!(pools[0].members.len(), 3);
        assert!(pools[0].sticky.as_ref().and_then(|s| s.cookie.as_ref()).is_some());
        assert_eq!(pools[1].id.to_string(), "web/api");
    }

    /// Every field of the schema is shown in `examples/pools.yaml`: set in a document, or, for
    /// the few a standalone file cannot use (a Service, a certificate), in a comment `# field:`.
    #[test]
    fn the_annotated_example_shows_every_field() {
        let text = include_str!("../examples/pools.yaml");
        let mut set = std::collections::BTreeSet::new();
        for (_, doc) in documents(text) {
            collect_paths(&doc.unwrap(), "", &mut set);
        }
        let commented: Vec<&str> = text.lines().filter_map(|l| l.split_once('#').map(|(_, c)| c)).collect();
        let missing: Vec<String> = strict::spec_fields()
            .unwrap()
            .into_iter()
            .filter(|f| !set.contains(f))
            .filter(|f| {
                let leaf = f.rsplit('.').next().unwrap_or(f);
                !commented.iter().any(|c| c.contains(&format!("{leaf}:")))
            })
            .collect();
        assert!(missing.is_empty(), "examples/pools.yaml lacks {missing:?}");
    }

    fn collect_paths(v: &Value, path: &str, out: &mut std::collections::BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    out.insert(p.clone());
                    collect_paths(v, &p, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| collect_paths(i, path, out)),
            _ => {}
        }
    }

    #[test]
    fn loads_multi_document_files() {
        let pools = parse_pools(GOOD).unwrap();
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].id.to_string(), "default/shop");
        assert_eq!(pools[1].id.to_string(), "web/api");
        assert_eq!(pools[0].members[1].load_factor, 2);
    }

    #[test]
    fn errors_name_document_field_and_reason() {
        let bad = GOOD.replace("127.0.0.1:8082", "localhost").replace("pathPrefix: /shop", "pathPrefix: 7");
        let errs = parse_pools(&bad).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("document 1 (shop): spec.backend.members[1].address: \"localhost\""),
            "{}",
            errs[0]
        );
        assert!(errs[1].starts_with("document 1 (shop): spec.frontend.pathPrefix"), "{}", errs[1]);
    }

    #[test]
    fn type_errors_name_the_field() {
        let bad = GOOD.replace("loadFactor: 2", "loadFactor: two");
        let errs = parse_pools(&bad).unwrap_err();
        assert!(
            errs[0].starts_with("document 1 (shop): spec.backend.members[1].loadFactor: invalid type"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn wrong_kind_syntax_error_and_empty_file() {
        let errs = parse_pools("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n").unwrap_err();
        assert!(errs[0].contains("expected apiVersion routeid.io/v1alpha1"), "{}", errs[0]);
        let errs = parse_pools("a: [b\n").unwrap_err();
        assert!(errs[0].starts_with("document 1: not valid YAML"), "{}", errs[0]);
        assert_eq!(parse_pools("---\n").unwrap_err(), ["no BalancerPool documents"]);
    }

    #[test]
    fn conflicts_and_duplicates_are_refused() {
        let dup = format!("{GOOD}---\n{}", GOOD.split("---").next().unwrap());
        let errs = parse_pools(&dup).unwrap_err();
        assert!(errs[0].contains("already defines pool default/shop"), "{errs:?}");
        let clash = GOOD.replace("name: api, namespace: web}", "name: api}\n").replace("  backend:\n    members: [{address: \"[::1]:9000\"", "  frontend: {hosts: [shop.example.com], pathPrefix: /shop/}\n  backend:\n    members: [{address: \"[::1]:9000\"");
        let errs = parse_pools(&clash).unwrap_err();
        assert!(
            errs[0].contains(
                "pool default/api claims host shop.example.com prefix /shop already served by pool default/shop"
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn a_duration_error_shows_the_documented_form() {
        let bad = GOOD.replace("  frontend: {hosts", "  timeouts: {connect: 60}\n  frontend: {hosts");
        let errs = parse_pools(&bad).unwrap_err();
        assert_eq!(
            errs,
            ["document 1 (shop): spec.timeouts.connect: \"60\" is not a duration like 60s, 500ms or 1m30s"]
        );
    }

    #[test]
    fn every_problem_of_a_file_is_reported_in_one_pass() {
        let third = "---\napiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {name: other}\nspec:\n  frontend: {hosts: [shop.example.com], pathPrefix: /shop}\n  backend: {members: [{address: \"127.0.0.1:9\", route: o}]}\n";
        let dup = "---\napiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {name: api, namespace: web}\nspec: {backend: {members: [{address: \"127.0.0.1:9\", route: x}]}}\n";
        let bad = GOOD
            .replace("frontend: {hosts", "lbMethod: ByRequest\n  stiky: {names: [JSESSIONID]}\n  frontend: {hosts")
            .replace("route: shop-1", "route: shop-0")
            .replace("[::1]:9000\", route: api-0", "localhost\", route: api-0, loadFactr: 2")
            + third
            + dup;
        let errs = parse_pools(&bad).unwrap_err();
        let expected = [
            "document 1 (shop): spec.stiky: unknown field, did you mean spec.sticky?",
            "document 1 (shop): spec.lbMethod: \"ByRequest\" is not one of ByRequests, ByTraffic, ByBusyness, Heartbeat, LeastLatency; did you mean ByRequests?",
            "document 1 (shop): spec.backend.members[1].route: \"shop-0\" is used by another member",
            "document 2 (api): spec.backend.members[0].loadFactr: unknown field, did you mean spec.backend.members[0].loadFactor?",
            "document 2 (api): spec.backend.members[0].address: \"localhost\"",
            "document 4 (api): another document already defines pool web/api",
        ];
        for e in expected {
            assert!(errs.iter().any(|x| x.starts_with(e)), "{e} not in {errs:#?}");
        }
        // The first document is refused, so `other` serves the host and prefix alone; a clean
        // first document would have conflicted with it, reported in the same run:
        let clash = format!("{GOOD}{third}{dup}");
        let errs = parse_pools(&clash).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs[0].contains("already defines pool web/api"), "{errs:#?}");
        assert!(errs[1].contains("pool default/other claims host shop.example.com prefix /shop"), "{errs:#?}");
    }
}
