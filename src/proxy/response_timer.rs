//! A client connection's response timer, reused from one request to the next.
//!
//! Every proxied request waits for its member's answer under the response timeout. A fresh
//! tokio timer per request costs a timer-wheel insertion and a removal, each under the wheel's
//! lock: with the timeout's wrapper, about 670 of a sticky request's 28,500 user-space
//! instructions (callgrind; bench/README.md). A connection's requests come one after another
//! (HTTP/1.1), so each takes the connection's timer and moves its deadline on. A later
//! deadline — every request under the same timeout — is an atomic update of the registered
//! timer (tokio re-files it when the old deadline comes, without waking anyone); only an
//! earlier one, or one after the timer fired, is re-filed at once. A request that finds the
//! timer in use (concurrent HTTP/2 streams of one connection) or gone (a request dropped
//! mid-wait takes its timer along) makes its own.
//!
//! A timer given back still holds the waker of its last poll, so when its deadline passes
//! with no request having moved it on, it wakes that task once for nothing: on HTTP/1.1 the
//! connection's own task, on HTTP/2 a stream's task that may have ended (its memory is then
//! kept until that deadline, at most one response timeout).

use std::pin::Pin;
use std::sync::Mutex;

use tokio::time::{Instant, Sleep};

/// The timer a client connection's requests share; see the module.
#[derive(Debug, Default)]
pub struct ResponseTimer(Mutex<Option<Pin<Box<Sleep>>>>);

impl ResponseTimer {
    /// A timer that fires at `deadline`: the connection's, when free, else a new one. Give it
    /// back with [`ResponseTimer::put`].
    pub fn start(&self, deadline: Instant) -> Pin<Box<Sleep>> {
        match self.0.try_lock().ok().and_then(|mut slot| slot.take()) {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Keeps `timer` for the connection's next request (one is kept; another is dropped).
    pub fn put(&self, timer: Pin<Box<Sleep>>) {
        if let Ok(mut slot) = self.0.try_lock()
            && slot.is_none()
        {
            *slot = Some(timer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::Poll;
    use std::time::Duration;

    /// Polls `timer` once, as a request waiting on its member does: it is then registered.
    async fn armed(mut timer: Pin<Box<Sleep>>) -> Pin<Box<Sleep>> {
        assert!(!fired(&mut timer).await);
        timer
    }

    /// Whether `timer` has fired by now (a no-op poll: paused time has moved on by then).
    async fn fired(timer: &mut Pin<Box<Sleep>>) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(timer.as_mut().poll(cx).is_ready())).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_registered_timer_moved_later_or_earlier_fires_at_its_new_deadline_only() {
        let timers = ResponseTimer::default();
        let t0 = Instant::now();
        let first = armed(timers.start(t0 + Duration::from_secs(60))).await;
        let first_at = &*first as *const Sleep;
        timers.put(first);
        // Later (the atomic path): nothing at the old deadline, then at the new one.
        let mut timer = armed(timers.start(t0 + Duration::from_secs(90))).await;
        assert_eq!(&*timer as *const Sleep, first_at, "the connection's timer is reused");
        tokio::time::sleep_until(t0 + Duration::from_secs(61)).await;
        assert!(!fired(&mut timer).await, "not at the old deadline");
        timer.as_mut().await;
        assert_eq!(Instant::now(), t0 + Duration::from_secs(90));
        // Registered again far out, then moved earlier (re-filed): fires at the earlier one.
        timers.put(timer);
        let timer = armed(timers.start(t0 + Duration::from_secs(300))).await;
        timers.put(timer);
        let timer = timers.start(t0 + Duration::from_secs(95));
        assert_eq!(&*timer as *const Sleep, first_at);
        timer.await;
        assert_eq!(Instant::now(), t0 + Duration::from_secs(95));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_in_use_is_not_shared() {
        let timers = ResponseTimer::default();
        let soon = Instant::now() + Duration::from_secs(1);
        let a = timers.start(soon);
        // Another stream of the connection meanwhile: a timer of its own.
        let b = timers.start(soon + Duration::from_secs(1));
        assert!(!std::ptr::eq(&*a, &*b));
        timers.put(a);
        timers.put(b);
        // One kept: the next request takes it; the one after makes a new one.
        let c = timers.start(soon);
        let d = timers.start(soon);
        assert!(!std::ptr::eq(&*c, &*d));
        c.await;
        assert_eq!(Instant::now(), soon);
    }
}
