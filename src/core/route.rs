//! A member's route: the name a session cookie carries (`JSESSIONID=abc.<route>`).
//!
//! Copied often, never allocated again: one routing-table rebuild hands each route from the
//! controller's derivation to the published config and the pool's members, and compares it
//! with the previous table's. Routes of up to 23 bytes (`tomcat-0`, StatefulSet pod names,
//! many Deployment pod names) live inline, zero-padded in three machine words: a copy touches
//! no other memory and an equality test is three word compares, so rebuilding a 10,000-member
//! pool does not chase 10,000 pointers. Longer routes are shared (`Arc<str>`): a copy is a
//! reference-count increment and two copies compare by pointer first.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// Longest route stored inline.
const INLINE: usize = 23;

/// An immutable, cheaply cloned route string.
#[derive(Clone)]
pub struct Route(Repr);

#[derive(Clone)]
enum Repr {
    /// Bytes `0..len` hold the text, the rest are zero, byte 23 is `len`.
    Inline([u8; INLINE + 1]),
    Shared(Arc<str>),
}

impl Route {
    /// The route as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // A copy of a whole `&str` ([`Route::new`]): always UTF-8, checked without `unsafe`
            // (a few nanoseconds for 23 bytes; comparisons use [`Route::as_bytes`]).
            Repr::Inline(_) => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            Repr::Shared(s) => s,
        }
    }

    /// The route's bytes: what comparisons and ordering use (`str` orders by its bytes).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline(b) => &b[..usize::from(b[INLINE])],
            Repr::Shared(s) => s.as_bytes(),
        }
    }

    fn new(s: &str) -> Route {
        if s.len() <= INLINE {
            let mut b = [0u8; INLINE + 1];
            b[..s.len()].copy_from_slice(s.as_bytes());
            b[INLINE] = s.len() as u8;
            Route(Repr::Inline(b))
        } else {
            Route(Repr::Shared(Arc::from(s)))
        }
    }
}

/// The three words of an inline route: equal words, equal routes (the padding is zero).
fn words(b: &[u8; INLINE + 1]) -> [u64; 3] {
    let w = |i: usize| u64::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5], b[i + 6], b[i + 7]]);
    [w(0), w(8), w(16)]
}

impl PartialEq for Route {
    fn eq(&self, other: &Route) -> bool {
        match (&self.0, &other.0) {
            (Repr::Inline(a), Repr::Inline(b)) => words(a) == words(b),
            (Repr::Shared(a), Repr::Shared(b)) => Arc::ptr_eq(a, b) || **a == **b,
            // Each text has one representation: a short one is always inline.
            _ => false,
        }
    }
}

impl Eq for Route {}

impl std::hash::Hash for Route {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `str` hashes, so a `HashMap<Route, _>` is searched with a `&str` (`Borrow<str>`).
        self.as_str().hash(state);
    }
}

impl Ord for Route {
    fn cmp(&self, other: &Route) -> std::cmp::Ordering {
        if self == other { std::cmp::Ordering::Equal } else { self.as_bytes().cmp(other.as_bytes()) }
    }
}

impl PartialOrd for Route {
    fn partial_cmp(&self, other: &Route) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq<str> for Route {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Route {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<String> for Route {
    fn eq(&self, other: &String) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<Route> for &str {
    fn eq(&self, other: &Route) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Deref for Route {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Route {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Route {
    fn from(s: &str) -> Route {
        Route::new(s)
    }
}

impl From<String> for Route {
    fn from(s: String) -> Route {
        Route::new(&s)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_and_orders_as_its_text() {
        let a = Route::from("pod-1");
        let b = Route::from(String::from("pod-1"));
        assert_eq!(a, b, "equal text, different allocations");
        assert!(a == "pod-1");
        assert!("pod-1" == a);
        let (one, two) = (Route::from("pod-1"), Route::from("pod-2"));
        assert!(one < two);
        assert_eq!(format!("{a} {a:?}"), "pod-1 \"pod-1\"");
        let set: std::collections::HashSet<Route> = [a.clone()].into();
        assert!(set.contains("pod-1"), "looked up by &str");
        // Long routes are shared, and still compare and hash as their text.
        let long = "checkout-service-7d9f8b6c4d-x2x9z";
        let (l1, l2) = (Route::from(long), Route::from(long.to_owned()));
        assert!(l1 == l2 && l1.clone() == l1 && l1.as_str() == long);
        let set: std::collections::HashSet<Route> = [l1.clone()].into();
        assert!(set.contains(long));
        // Inline and shared order as text, at the boundary too.
        let edge = Route::from("a".repeat(INLINE).as_str());
        let over = Route::from("a".repeat(INLINE + 1).as_str());
        assert!(edge < over);
        assert_ne!(edge, over);
        assert_eq!(over.as_str().len(), INLINE + 1);
        let (empty, a, d) = (Route::from(""), Route::from("a"), Route::from("d"));
        assert!(empty < a);
        assert!(d > l1);
    }

    proptest::proptest! {
        #[test]
        fn behaves_as_its_text(a in "[a-z0-9.-]{0,30}", b in "[a-z0-9.-]{0,30}") {
            let (ra, rb) = (Route::from(a.as_str()), Route::from(b.as_str()));
            proptest::prop_assert_eq!(ra.as_str(), a.as_str());
            proptest::prop_assert_eq!(ra == rb, a == b);
            proptest::prop_assert_eq!(ra.cmp(&rb), a.cmp(&b));
        }
    }
}
