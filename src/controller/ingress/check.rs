//! `routeid ingress-check`: what moving an Ingress class to routeid means, before switching.
//!
//! Lists every Ingress of a class (by `ingressClassName` or the legacy annotation) and, per
//! ingress-nginx or routeid annotation, whether routeid reads it; then runs the same translation
//! the controller runs, so an Ingress routeid would refuse is shown as refused, with why. The
//! report is a pure function of the Ingresses, so it is tested without a cluster.

use std::fmt::Write as _;

use k8s_openapi::api::networking::v1::Ingress;

use super::translate;
use crate::api::ingress::{LEGACY_CLASS_ANNOTATION, NGINX_ANNOTATIONS, Support, support_of};

/// Whether `ing` belongs to `class` (its `ingressClassName`, else the legacy annotation).
pub fn of_class(ing: &Ingress, class: &str) -> bool {
    let named = ing.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref());
    let legacy = ing.metadata.annotations.as_ref().and_then(|a| a.get(LEGACY_CLASS_ANNOTATION)).map(String::as_str);
    named.or(legacy) == Some(class)
}

fn label(s: Support) -> &'static str {
    match s {
        Support::Supported => "supported",
        Support::Differs => "supported, differs",
        Support::Unsupported => "NOT SUPPORTED",
    }
}

/// The report, and how many findings stand in the way of moving: annotations routeid does not
/// read plus Ingresses routeid would refuse (each refusal is shown with its reason, as the
/// controller would report it). Ingresses without a class are listed after, not counted: they
/// move only where ingress-nginx serves class-less Ingresses.
pub fn report(ingresses: &[Ingress], class: &str) -> (String, usize) {
    let mut out = String::new();
    let (mut unsupported, mut refused, mut seen) = (0, 0, 0);
    for ing in ingresses.iter().filter(|i| of_class(i, class)) {
        seen += 1;
        let (u, r) = one(&mut out, ing);
        unsupported += u;
        refused += usize::from(r);
    }
    let _ = writeln!(
        out,
        "{seen} Ingress(es) of class {class:?}; {unsupported} annotation(s) routeid does not support; \
         {refused} Ingress(es) routeid would refuse. To move one: set spec.ingressClassName to routeid's class."
    );
    let classless: Vec<&Ingress> = ingresses.iter().filter(|i| without_class(i)).collect();
    if !classless.is_empty() {
        let _ = writeln!(
            out,
            "\n{} Ingress(es) without a class (they move too if ingress-nginx is the default class or runs \
             with --watch-ingress-without-class; not counted above):",
            classless.len()
        );
        for ing in classless {
            one(&mut out, ing);
        }
    }
    (out, unsupported + refused)
}

/// Whether `ing` names no class at all.
fn without_class(ing: &Ingress) -> bool {
    let named = ing.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref());
    let legacy = ing.metadata.annotations.as_ref().and_then(|a| a.get(LEGACY_CLASS_ANNOTATION));
    named.is_none() && legacy.is_none()
}

/// One Ingress's lines: each annotation with its support, then the translation's verdict.
/// Returns the unsupported annotations and whether routeid would refuse it.
fn one(out: &mut String, ing: &Ingress) -> (usize, bool) {
    let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
    let name = ing.metadata.name.as_deref().unwrap_or("");
    let _ = writeln!(out, "Ingress {ns}/{name}");
    let mut any = false;
    let mut unsupported = 0;
    for (key, value) in ing.metadata.annotations.iter().flatten() {
        let Some(s) = support_of(key) else { continue };
        any = true;
        if s == Support::Unsupported {
            unsupported += 1;
        }
        let note = key
            .strip_prefix(crate::api::ingress::NGINX_PREFIX)
            .and_then(|n| NGINX_ANNOTATIONS.iter().find(|a| a.0 == n))
            .map(|a| a.2)
            .filter(|n| s == Support::Differs && !n.is_empty())
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        let _ = writeln!(out, "  {:<20} {key}: {value:?}{note}", label(s));
    }
    if !any {
        let _ = writeln!(out, "  no ingress-nginx annotations: plain routing, served as it is");
    }
    match translate(ing, "routeid") {
        Ok(t) => {
            // Valid annotations that would do nothing (the unsupported ones are listed above).
            for u in &t.no_effect {
                let _ = writeln!(out, "  {:<20} {u}", "NO EFFECT");
            }
            for n in &t.notes {
                let _ = writeln!(out, "  {:<20} {n}", "note");
            }
            (unsupported, false)
        }
        Err(problems) => {
            for p in &problems {
                let _ = writeln!(out, "  REFUSED: {p}");
            }
            (unsupported, true)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ing(name: &str, class: Option<&str>, legacy: Option<&str>, annotations: serde_json::Value) -> Ingress {
        let mut a = annotations;
        if let (Some(l), serde_json::Value::Object(m)) = (legacy, &mut a) {
            m.insert(LEGACY_CLASS_ANNOTATION.into(), json!(l));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "web", "annotations": a},
            "spec": {"ingressClassName": class, "rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]},
        }))
        .unwrap()
    }

    #[test]
    fn lists_each_annotation_with_its_support() {
        let all = [
            ing(
                "shop",
                Some("nginx"),
                None,
                json!({
                    "nginx.ingress.kubernetes.io/affinity": "cookie",
                    "nginx.ingress.kubernetes.io/rewrite-target": "/",
                    "nginx.ingress.kubernetes.io/limit-rps": "5",
                }),
            ),
            ing("legacy", None, Some("nginx"), json!({})),
            ing("other", Some("traefik"), None, json!({"nginx.ingress.kubernetes.io/limit-rps": "5"})),
        ];
        let (text, unsupported) = report(&all, "nginx");
        assert_eq!(unsupported, 1);
        assert!(text.contains("Ingress web/shop"));
        assert!(text.contains("supported            nginx.ingress.kubernetes.io/affinity: \"cookie\""), "{text}");
        assert!(text.contains("supported, differs   nginx.ingress.kubernetes.io/rewrite-target"), "{text}");
        assert!(text.contains("NOT SUPPORTED        nginx.ingress.kubernetes.io/limit-rps"), "{text}");
        assert!(text.contains("Ingress web/legacy\n  no ingress-nginx annotations"), "{text}");
        assert!(!text.contains("web/other"), "another class");
        assert!(text.contains("2 Ingress(es) of class \"nginx\""));
    }

    #[test]
    fn ingresses_routeid_would_refuse_are_reported_and_counted() {
        let all = [
            ing("rewrite", Some("nginx"), None, json!({"nginx.ingress.kubernetes.io/rewrite-target": "/$1"})),
            ing(
                "cookie",
                Some("nginx"),
                None,
                json!({
                    "nginx.ingress.kubernetes.io/affinity": "cookie",
                    "nginx.ingress.kubernetes.io/session-cookie-name": "a b",
                }),
            ),
            ing("fine", Some("nginx"), None, json!({"nginx.ingress.kubernetes.io/session-cookie-secure": "1"})),
            ing("loose", None, None, json!({"nginx.ingress.kubernetes.io/affinity": "ip"})),
        ];
        let (text, findings) = report(&all, "nginx");
        assert_eq!(findings, 2, "two refusals, the class-less Ingress not counted: {text}");
        assert!(
            text.contains("  REFUSED: metadata.annotations[nginx.ingress.kubernetes.io/rewrite-target]: \"/$1\""),
            "{text}"
        );
        assert!(
            text.contains("  REFUSED: metadata.annotations[nginx.ingress.kubernetes.io/session-cookie-name]: \"a b\""),
            "{text}"
        );
        assert!(text.contains("NO EFFECT            nginx.ingress.kubernetes.io/session-cookie-secure"), "{text}");
        assert!(text.contains("2 Ingress(es) routeid would refuse"), "{text}");
        assert!(text.contains("1 Ingress(es) without a class"), "{text}");
        assert!(text.contains("Ingress web/loose\n"), "{text}");
    }
}
