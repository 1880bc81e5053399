//! How every watch of the controller recovers: a routing table is only as fresh as its watches.
//!
//! kube-runtime's default backoff is tuned for thousands of clients sharing one API server
//! (client-go's 0.8 s doubling to 30 s, reset only after 120 s without errors). For a load
//! balancer that serves stale endpoints until its watch comes back, that costs up to a minute
//! after an API-server outage: the outage grows the backoff to 30 s, then every watch resumes
//! with a resourceVersion that is too old, gets `410 Gone`, and sleeps another 30 s before it
//! re-lists. Here instead:
//!
//! - `410 Gone` re-lists at once: it is the API server's answer, not a failure to back off from
//!   (at most one such free re-list per second and watch, so a server that answers every watch
//!   with 410 cannot make it spin);
//! - other errors back off from 250 ms, doubling, to at most 2 s, with jitter (a few watches
//!   per replica, a few replicas: reconnecting every 2 s is no load for an API server);
//! - any event resets the backoff: the connection works again;
//! - a watch stream that ends is started again (and said so), so the loop never sits with
//!   nothing watching.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use kube::Api;
use kube::runtime::watcher;
use tokio::time::Instant;

/// A watch as the run loop consumes it; it never ends.
pub type Events<K> = BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;

/// First delay after an error.
pub const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest delay between two reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// At most one immediate re-list after `410 Gone` per this interval and watch.
pub const GONE_RELIST_INTERVAL: Duration = Duration::from_secs(1);

/// Whether a watch error means "your resourceVersion is too old, re-list" (`410 Gone`).
pub fn is_gone(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(s) => s.code == 410,
        _ => false,
    }
}

/// The watch of `api`, recovering as the module says; `what` names it in logs.
pub fn watch<K>(api: Api<K>, config: watcher::Config, what: &'static str) -> Events<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let make = move || watcher(api.clone(), config.clone());
    with_backoff(restarting(make, what), is_gone).boxed()
}

/// `make()`'s stream, made again whenever it ends.
pub fn restarting<S, F>(mut make: F, what: &'static str) -> impl Stream<Item = S::Item> + Send
where
    S: Stream + Send + 'static,
    S::Item: Send,
    F: FnMut() -> S + Send + 'static,
{
    let first = Box::pin(make());
    futures_util::stream::unfold((first, make), move |(mut inner, mut make)| async move {
        loop {
            if let Some(item) = inner.next().await {
                return Some((item, (inner, make)));
            }
            tracing::warn!(watch = what, "the watch stream ended; starting it again");
            inner = Box::pin(make());
        }
    })
}

/// Delays after errors, as the module says.
#[derive(Debug)]
pub struct Backoff {
    attempt: u32,
    last_free_relist: Option<Instant>,
    seed: RandomState,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { attempt: 0, last_free_relist: None, seed: RandomState::new() }
    }
}

impl Backoff {
    /// The pause after an item: none after an event (which resets the backoff) or a first
    /// `410 Gone` in a while, a growing one after other errors.
    pub fn after(&mut self, ok: bool, gone: bool) -> Option<Duration> {
        if ok {
            self.attempt = 0;
            return None;
        }
        let now = Instant::now();
        if gone && self.last_free_relist.is_none_or(|t| now.duration_since(t) >= GONE_RELIST_INTERVAL) {
            self.last_free_relist = Some(now);
            self.attempt = 0;
            return None;
        }
        let ceiling = MIN_BACKOFF.saturating_mul(1 << self.attempt.min(8)).min(MAX_BACKOFF);
        self.attempt = self.attempt.saturating_add(1);
        // Jitter: between half the ceiling and the ceiling, so replicas spread out.
        let half = ceiling / 2;
        let spread = self.seed.hash_one((self.attempt, now)) % (half.as_millis() as u64 + 1);
        Some(half + Duration::from_millis(spread))
    }
}

/// `stream` with a pause after each error as [`Backoff`] says; `gone` picks out `410 Gone`.
pub fn with_backoff<S, T, E>(stream: S, gone: fn(&E) -> bool) -> impl Stream<Item = Result<T, E>> + Send
where
    S: Stream<Item = Result<T, E>> + Send + 'static,
    T: Send,
    E: Send,
{
    let state = (Box::pin(stream), Backoff::default(), None::<Duration>);
    futures_util::stream::unfold(state, move |(mut inner, mut backoff, pause)| async move {
        if let Some(d) = pause {
            tokio::time::sleep(d).await;
        }
        let item = inner.next().await?;
        let pause = match &item {
            Ok(_) => backoff.after(true, false),
            Err(e) => backoff.after(false, gone(e)),
        };
        Some((item, (inner, backoff, pause)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum E {
        Gone,
        Down,
    }

    fn gone(e: &E) -> bool {
        *e == E::Gone
    }

    #[test]
    fn errors_back_off_up_to_the_ceiling_and_an_event_resets() {
        let mut b = Backoff::default();
        for i in 0..10 {
            let ceiling = MIN_BACKOFF.saturating_mul(1 << i.min(8)).min(MAX_BACKOFF);
            let d = b.after(false, false).unwrap();
            assert!(d >= ceiling / 2 && d <= ceiling, "pause {i}: {d:?} not within {ceiling:?}");
        }
        assert_eq!(b.after(true, false), None, "no pause after an event");
        assert!(b.after(false, false).unwrap() <= MIN_BACKOFF, "and the next error starts over");
    }

    #[test]
    fn gone_relists_at_once_but_not_twice_within_a_second() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.after(false, false);
        }
        assert_eq!(b.after(false, true), None, "410 Gone after an outage: at once");
        assert!(b.after(false, false).unwrap() <= MIN_BACKOFF, "and the backoff starts over");
        let again = b.after(false, true);
        assert!(again.is_some_and(|d| d >= MIN_BACKOFF), "a second 410 within a second backs off: {again:?}");
    }

    #[tokio::test]
    async fn the_stream_pauses_after_errors_only() {
        let items: Vec<Result<u8, E>> = vec![Err(E::Gone), Ok(1), Err(E::Down), Ok(2)];
        let mut s = std::pin::pin!(with_backoff(futures_util::stream::iter(items), gone));
        let t = Instant::now();
        assert_eq!(s.next().await, Some(Err(E::Gone)));
        assert_eq!(s.next().await, Some(Ok(1)));
        assert!(t.elapsed() < MIN_BACKOFF / 2, "no pause after 410 Gone: {:?}", t.elapsed());
        assert_eq!(s.next().await, Some(Err(E::Down)));
        let t = Instant::now();
        assert_eq!(s.next().await, Some(Ok(2)));
        assert!(t.elapsed() >= MIN_BACKOFF / 2, "a pause after another error: {:?}", t.elapsed());
    }

    #[tokio::test]
    async fn a_stream_that_ends_is_started_again() {
        let mut made = 0u8;
        let s = restarting(
            move || {
                made += 1;
                futures_util::stream::iter([made, made])
            },
            "test",
        );
        let got: Vec<u8> = s.take(5).collect().await;
        assert_eq!(got, [1, 1, 2, 2, 3]);
    }
}
