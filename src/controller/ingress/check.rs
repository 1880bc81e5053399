//! `routeid ingress-check`: what moving an Ingress class to routeid means, before switching.
//!
//! Lists every Ingress of a class (by `ingressClassName` or the legacy annotation) and, per
//! ingress-nginx or routeid annotation, whether routeid reads it. The report is a pure function
//! of the Ingresses, so it is tested without a cluster.

use std::fmt::Write as _;

use k8s_openapi::api::networking::v1::Ingress;

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

/// The report, and how many annotations are not supported.
pub fn report(ingresses: &[Ingress], class: &str) -> (String, usize) {
    let mut out = String::new();
    let mut unsupported = 0;
    let mut seen = 0;
    for ing in ingresses.iter().filter(|i| of_class(i, class)) {
        seen += 1;
        let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
        let name = ing.metadata.name.as_deref().unwrap_or("");
        let _ = writeln!(out, "Ingress {ns}/{name}");
        let mut any = false;
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
    }
    let _ = writeln!(
        out,
        "{seen} Ingress(es) of class {class:?}; {unsupported} annotation(s) routeid does not support. \
         To move one: set spec.ingressClassName to routeid's class."
    );
    (out, unsupported)
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
            "spec": {"ingressClassName": class},
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
}
