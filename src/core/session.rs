//! Gateway API session values (GEP-1619): the route a client holds, and, with an
//! `absoluteTimeout`, when the session ends, sealed so that the proxy can enforce it.
//!
//! Without a timeout the value is the member's route itself (`shop-0`), like Apache's `ROUTEID`:
//! a client that forges one only picks a pod it could have been given anyway. With a timeout it
//! is `route.expires.mac`: `expires` in seconds since the Unix epoch, `mac` the first 16 bytes
//! of HMAC-SHA256 over the session name, the route and the expiry (base64url), compared in
//! constant time. A client can neither extend a session nor carry it to another rule, and every
//! replica that holds the same key reads the same value the same way (the key comes from a
//! file, the chart's Secret, so restarts and other replicas keep sessions working).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

use super::config::is_valid_route;
use super::gateway::SessionPersistence;

/// Bytes of the HMAC kept in a value: 128 bits, as much as a forger must guess.
const MAC_LEN: usize = 16;
/// Shortest key accepted from a file.
pub const MIN_KEY_LEN: usize = 32;
/// Seconds a replica's clock may run ahead of another's: a value made there may end this much
/// later than `now + absoluteTimeout` here and still be honoured.
const MAX_CLOCK_SKEW: u64 = 60;

/// The HMAC key that seals session values. Every replica must hold the same one.
#[derive(Clone)]
pub struct SessionKey(hmac::Key);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// A key file that cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Fewer bytes than [`MIN_KEY_LEN`].
    #[error("the session key has {0} bytes; it needs at least {MIN_KEY_LEN}")]
    TooShort(usize),
    /// The system's random generator failed.
    #[error("no random bytes for a session key")]
    NoRandom,
}

impl SessionKey {
    /// A key from secret bytes (a mounted Secret's content; surrounding white space, such as a
    /// trailing newline, is not part of it — unless without it fewer than [`MIN_KEY_LEN`] bytes
    /// would be left: 32 random bytes may well begin or end with a byte that looks like white
    /// space, and are a good key as they are).
    pub fn from_bytes(bytes: &[u8]) -> Result<SessionKey, KeyError> {
        let trimmed = bytes.trim_ascii();
        let bytes = if trimmed.len() >= MIN_KEY_LEN { trimmed } else { bytes };
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort(trimmed.len()));
        }
        Ok(SessionKey(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// A random key: sessions with a timeout then end with the process and are not read by
    /// other replicas.
    pub fn random() -> Result<SessionKey, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let k = hmac::Key::generate(hmac::HMAC_SHA256, &rng).map_err(|_| KeyError::NoRandom)?;
        Ok(SessionKey(k))
    }

    fn mac(&self, name: &str, route: &str, expires: u64) -> [u8; MAC_LEN] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(name.as_bytes());
        ctx.update(&[0]);
        ctx.update(route.as_bytes());
        ctx.update(&[0]);
        ctx.update(&expires.to_be_bytes());
        let tag = ctx.sign();
        let mut out = [0; MAC_LEN];
        out.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
        out
    }
}

/// Wall-clock seconds for session expiry: the system clock, or a clock a test moves.
#[derive(Clone, Debug, Default)]
pub enum WallClock {
    /// `SystemTime::now()`.
    #[default]
    System,
    /// Seconds since the epoch, set by hand (tests).
    Manual(Arc<AtomicU64>),
}

impl WallClock {
    /// A hand-moved clock starting at `unix_secs`.
    pub fn manual(unix_secs: u64) -> WallClock {
        WallClock::Manual(Arc::new(AtomicU64::new(unix_secs)))
    }

    /// Seconds since the Unix epoch.
    pub fn now_unix(&self) -> u64 {
        match self {
            WallClock::System => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            WallClock::Manual(s) => s.load(Relaxed),
        }
    }

    /// Moves a manual clock forward (no effect on the system clock).
    pub fn advance(&self, by: Duration) {
        if let WallClock::Manual(s) = self {
            s.fetch_add(by.as_secs(), Relaxed);
        }
    }
}

/// What a session value says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened<'a> {
    /// A valid session for `route`, ending at `expires` (Unix seconds) when it has a timeout.
    Valid {
        /// The member's route.
        route: &'a str,
        /// When the session ends.
        expires: Option<u64>,
    },
    /// A genuine value whose time is up.
    Expired,
    /// Not a value this proxy made (bad bytes, wrong MAC, no expiry where one is needed).
    Forged,
}

/// Reads a session value of persistence `p` at `now` (Unix seconds).
/// Without a key a value with a timeout is never valid (it could not have been sealed).
pub fn open<'a>(p: &SessionPersistence, key: Option<&SessionKey>, value: &'a str, now: u64) -> Opened<'a> {
    let Some(key) = key.filter(|_| p.absolute_timeout.is_some()) else {
        let valid = p.absolute_timeout.is_none() && is_valid_route(value);
        return if valid { Opened::Valid { route: value, expires: None } } else { Opened::Forged };
    };
    let mut parts = value.rsplitn(3, '.');
    let (Some(mac), Some(expires), Some(route)) = (parts.next(), parts.next(), parts.next()) else {
        return Opened::Forged;
    };
    let Ok(expires) = expires.parse::<u64>() else { return Opened::Forged };
    let mut got = [0u8; MAC_LEN];
    let ok_len = URL_SAFE_NO_PAD.decode_slice(mac, &mut got).ok() == Some(MAC_LEN);
    let want = key.mac(&p.name, route, expires);
    // Constant time: nothing about the right MAC leaks through how long a wrong one takes.
    if !ok_len || !is_valid_route(route) || !same_mac(&got, &want) {
        return Opened::Forged;
    }
    // A genuine value that ends later than this rule would ever let a session run (made under
    // a longer timeout since lowered, or by another rule with the same name and a longer one) is
    // over too: the rule's own `absoluteTimeout` bounds what it honours.
    let latest =
        p.absolute_timeout.map_or(u64::MAX, |t| now.saturating_add(t.as_secs()).saturating_add(MAX_CLOCK_SKEW));
    if now >= expires || expires > latest { Opened::Expired } else { Opened::Valid { route, expires: Some(expires) } }
}

/// Compares two MACs in time that does not depend on where they differ (ring's own helper for
/// this is deprecated; this is the usual XOR fold, kept opaque to the optimiser).
fn same_mac(a: &[u8; MAC_LEN], b: &[u8; MAC_LEN]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The value for a session of `route` ending at `expires` (with a timeout), or the bare route;
/// `None` when a timed session has no key to seal it.
pub fn seal(p: &SessionPersistence, key: Option<&SessionKey>, route: &str, expires: Option<u64>) -> Option<String> {
    match (expires, key) {
        (None, _) => Some(route.to_owned()),
        (Some(at), Some(key)) => {
            let mac = key.mac(&p.name, route, at);
            Some(format!("{route}.{at}.{}", URL_SAFE_NO_PAD.encode(mac)))
        }
        (Some(_), None) => None,
    }
}

/// When a session starting now ends, if `p` has a timeout.
pub fn expiry(p: &SessionPersistence, now: u64) -> Option<u64> {
    p.absolute_timeout.map(|t| now.saturating_add(t.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::gateway::{CookieLifetime, SessionKind};

    fn persistence(timeout: Option<u64>) -> SessionPersistence {
        SessionPersistence {
            kind: SessionKind::Cookie,
            name: "s".into(),
            cookie_path: "/".into(),
            lifetime: CookieLifetime::Session,
            absolute_timeout: timeout.map(Duration::from_secs),
        }
    }

    fn key(b: u8) -> Option<SessionKey> {
        Some(SessionKey::from_bytes(&[b; 32]).unwrap())
    }

    #[test]
    fn a_sealed_value_opens_until_it_expires() {
        let p = persistence(Some(60));
        let v = seal(&p, key(1).as_ref(), "shop-0.x", expiry(&p, 1000)).unwrap();
        assert!(v.starts_with("shop-0.x.1060."), "{v}");
        assert_eq!(open(&p, key(1).as_ref(), &v, 1059), Opened::Valid { route: "shop-0.x", expires: Some(1060) });
        assert_eq!(open(&p, key(1).as_ref(), &v, 1060), Opened::Expired);
    }

    #[test]
    fn forged_extended_or_foreign_values_are_refused() {
        let p = persistence(Some(60));
        let v = seal(&p, key(1).as_ref(), "a", Some(1060)).unwrap();
        assert_eq!(seal(&p, None, "a", Some(1060)), None, "no key, no timed session");
        assert_eq!(open(&p, None, &v, 1000), Opened::Forged);
        let extended = v.replace(".1060.", ".9999.");
        assert_eq!(open(&p, key(1).as_ref(), &extended, 1000), Opened::Forged, "a longer expiry breaks the MAC");
        assert_eq!(open(&p, key(2).as_ref(), &v, 1000), Opened::Forged, "another key");
        let other_rule = SessionPersistence { name: "t".into(), ..p.clone() };
        assert_eq!(open(&other_rule, key(1).as_ref(), &v, 1000), Opened::Forged, "another rule's session");
        let rerouted = v.replacen('a', "b", 1);
        assert_eq!(open(&p, key(1).as_ref(), &rerouted, 1000), Opened::Forged, "another route");
        for junk in ["a", "a.1060", "a.x.AAAA", "", "..", "a.1060.!!!!", "a b.1060.AAAAAAAAAAAAAAAAAAAAAA"] {
            assert_eq!(open(&p, key(1).as_ref(), junk, 1000), Opened::Forged, "{junk:?}");
        }
    }

    #[test]
    fn a_value_that_outlives_the_rules_timeout_is_over() {
        // Sealed under a 1-day timeout; the rule now says 60 s (lowered, or another rule with
        // the same session name): the value is not honoured for the rest of its day.
        let long = persistence(Some(86_400));
        let v = seal(&long, key(1).as_ref(), "a", expiry(&long, 1000)).unwrap();
        let short = persistence(Some(60));
        assert_eq!(open(&short, key(1).as_ref(), &v, 2000), Opened::Expired);
        // A replica whose clock is a little ahead still makes values this one honours.
        let ahead = seal(&short, key(1).as_ref(), "a", expiry(&short, 1030)).unwrap();
        assert_eq!(open(&short, key(1).as_ref(), &ahead, 1000), Opened::Valid { route: "a", expires: Some(1090) });
    }

    #[test]
    fn without_a_timeout_the_value_is_the_route() {
        let p = persistence(None);
        assert_eq!(seal(&p, key(1).as_ref(), "shop-0", None).as_deref(), Some("shop-0"));
        assert_eq!(open(&p, None, "shop-0", 0), Opened::Valid { route: "shop-0", expires: None });
        assert_eq!(open(&p, key(1).as_ref(), "shop-0", 0), Opened::Valid { route: "shop-0", expires: None });
        assert_eq!(open(&p, key(1).as_ref(), "a b", 0), Opened::Forged);
    }

    #[test]
    fn keys_need_32_bytes_and_ignore_a_trailing_newline() {
        assert!(matches!(SessionKey::from_bytes(b"short\n"), Err(KeyError::TooShort(5))));
        let p = persistence(Some(5));
        let a = SessionKey::from_bytes(&[b'k'; 40]).unwrap();
        let mut with_nl = vec![b'k'; 40];
        with_nl.push(b'\n');
        let b = SessionKey::from_bytes(&with_nl).unwrap();
        assert_eq!(
            seal(&p, Some(&a), "r", Some(9)),
            seal(&p, Some(&b), "r", Some(9)),
            "replicas with the same Secret agree"
        );
        assert!(SessionKey::random().is_ok());
    }

    #[test]
    fn thirty_two_random_bytes_that_end_in_a_newline_are_a_key() {
        // `head -c 32 /dev/urandom > key` ends in a white-space byte about once in 40 tries.
        let mut raw = [0x5a_u8; 32];
        raw[31] = b'\n';
        raw[0] = b' ';
        assert!(SessionKey::from_bytes(&raw).is_ok());
        assert!(matches!(SessionKey::from_bytes(&raw[..31]), Err(KeyError::TooShort(30))));
    }
}
