//! Hostname intersection between a listener and a route, as the Gateway API defines it.
//!
//! A listener without a hostname accepts every route hostname; a route without hostnames takes
//! the listener's. Otherwise each route hostname is kept where it meets the listener's: equal
//! names, an exact name under a wildcard (`foo.example.com` under `*.example.com`, any number of
//! labels in front), or of two wildcards the narrower one. `*.example.com` does not cover
//! `example.com` itself.

/// What a route serves through one listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hosts {
    /// Every host (neither side names one).
    Any,
    /// These hosts (lowercase; wildcards as written, `*.example.com`).
    Some(Vec<String>),
}

/// Whether `wild` (`*.d`) covers `name` (exact or wildcard), with at least one label in front.
fn covers(wild: &str, name: &str) -> bool {
    let Some(domain) = wild.strip_prefix('*') else { return false };
    // `domain` keeps its leading dot: `.example.com`.
    let base = name.strip_prefix('*').unwrap_or(name);
    name.len() > domain.len() && base.ends_with(domain) && base.len() > domain.len()
}

/// The one hostname both `a` and `b` serve, if any (the narrower of the two).
pub fn meet(a: &str, b: &str) -> Option<String> {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    if a == b {
        Some(a)
    } else if covers(&a, &b) {
        Some(b)
    } else if covers(&b, &a) {
        Some(a)
    } else {
        None
    }
}

/// The hosts a route with `route_hosts` serves through a listener with `listener`; `None` when
/// none intersect (`NoMatchingListenerHostname`).
pub fn intersect(listener: Option<&str>, route_hosts: &[String]) -> Option<Hosts> {
    match (listener.filter(|l| !l.is_empty()), route_hosts.is_empty()) {
        (None, true) => Some(Hosts::Any),
        (None, false) => Some(Hosts::Some(route_hosts.iter().map(|h| h.to_ascii_lowercase()).collect())),
        (Some(l), true) => Some(Hosts::Some(vec![l.to_ascii_lowercase()])),
        (Some(l), false) => {
            let mut out: Vec<String> = route_hosts.iter().filter_map(|h| meet(l, h)).collect();
            out.dedup();
            (!out.is_empty()).then_some(Hosts::Some(out))
        }
    }
}

/// Folds the hosts of several listeners: `Any` wins, names are unioned without duplicates.
pub fn union(acc: Option<Hosts>, more: Hosts) -> Hosts {
    match (acc, more) {
        (None, h) => h,
        (Some(Hosts::Any), _) | (_, Hosts::Any) => Hosts::Any,
        (Some(Hosts::Some(mut a)), Hosts::Some(b)) => {
            for h in b {
                if !a.contains(&h) {
                    a.push(h);
                }
            }
            Hosts::Some(a)
        }
    }
}

/// Whether two listeners' hosts are the same set of names (order aside), so one pool can
/// serve both.
pub fn same(a: &Hosts, b: &Hosts) -> bool {
    match (a, b) {
        (Hosts::Any, Hosts::Any) => true,
        (Hosts::Some(a), Hosts::Some(b)) => a.len() == b.len() && a.iter().all(|h| b.contains(h)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(h: &[&str]) -> Option<Hosts> {
        Some(Hosts::Some(h.iter().map(|s| (*s).to_owned()).collect()))
    }

    #[test]
    fn intersection_follows_the_gateway_api_table() {
        let r = |h: &[&str]| h.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        // (listener, route hostnames, served)
        let cases: &[(Option<&str>, &[&str], Option<Hosts>)] = &[
            (None, &[], Some(Hosts::Any)),
            (None, &["a.example.com"], some(&["a.example.com"])),
            (Some("a.example.com"), &[], some(&["a.example.com"])),
            (Some("a.example.com"), &["A.example.com"], some(&["a.example.com"])),
            (Some("a.example.com"), &["b.example.com"], None),
            (
                Some("*.example.com"),
                &["a.example.com", "x.y.example.com", "example.com"],
                some(&["a.example.com", "x.y.example.com"]),
            ),
            (Some("a.example.com"), &["*.example.com"], some(&["a.example.com"])),
            (Some("*.example.com"), &["*.a.example.com"], some(&["*.a.example.com"])),
            (Some("*.a.example.com"), &["*.example.com"], some(&["*.a.example.com"])),
            (Some("*.example.com"), &["*.example.org"], None),
            (Some("*.example.com"), &["fooexample.com"], None),
        ];
        for (l, hosts, want) in cases {
            assert_eq!(intersect(*l, &r(hosts)), *want, "listener {l:?} route {hosts:?}");
        }
    }

    #[test]
    fn any_wins_a_union_and_names_are_not_repeated() {
        assert_eq!(union(some(&["a"]), Hosts::Any), Hosts::Any);
        assert_eq!(union(some(&["a"]), Hosts::Some(vec!["a".into(), "b".into()])), some(&["a", "b"]).unwrap());
    }

    #[test]
    fn same_hosts_ignore_order() {
        assert!(same(&some(&["a", "b"]).unwrap(), &some(&["b", "a"]).unwrap()));
        assert!(!same(&some(&["a"]).unwrap(), &some(&["a", "b"]).unwrap()));
        assert!(!same(&Hosts::Any, &some(&["a"]).unwrap()));
        assert!(same(&Hosts::Any, &Hosts::Any));
    }
}
