//! A member's route: the name a session cookie carries (`JSESSIONID=abc.<route>`).
//!
//! Shared, not copied: one routing-table rebuild hands the same route from the controller's
//! derivation to the published config and the pool's members, so a 10,000-member pool is
//! rebuilt with a reference-count increment per member instead of a string allocation, and
//! two routes from the same source compare by pointer first.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// An immutable, cheaply cloned route string.
#[derive(Clone)]
pub struct Route(Arc<str>);

impl Route {
    /// The route as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Route {
    fn eq(&self, other: &Route) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl Eq for Route {}

impl Ord for Route {
    fn cmp(&self, other: &Route) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) { std::cmp::Ordering::Equal } else { (*self.0).cmp(&*other.0) }
    }
}

impl PartialOrd for Route {
    fn partial_cmp(&self, other: &Route) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::hash::Hash for Route {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `str` hashes, so a `HashMap<Route, _>` is searched with a `&str` (`Borrow<str>`).
        (*self.0).hash(state);
    }
}

impl PartialEq<str> for Route {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Route {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Route {
    fn eq(&self, other: &String) -> bool {
        &*self.0 == other.as_str()
    }
}

impl PartialEq<Route> for String {
    fn eq(&self, other: &Route) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Route> for &str {
    fn eq(&self, other: &Route) -> bool {
        *self == other.as_str()
    }
}

impl Deref for Route {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Route {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Route {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Route {
    fn from(s: &str) -> Route {
        Route(Arc::from(s))
    }
}

impl From<String> for Route {
    fn from(s: String) -> Route {
        Route(Arc::from(s))
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
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
    }
}
