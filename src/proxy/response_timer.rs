//! A client connection's response timer, reused from one request to the next.
//!
//! Every proxied request waits for its member's answer under the response timeout. A fresh
//! tokio timer per request costs a timer-wheel insertion and removal under the wheel's lock,
//! and a clone of the runtime's handle: about 670 of a sticky request's 28,500 user-space
//! instructions (callgrind, bench/README.md). A connection's requests come one after another
//! (HTTP/1.1), so each takes the connection's timer and moves its deadline on. A later
//! deadline — every request under the same timeout — is an atomic update of the registered
//! timer (tokio re-files it when the old deadline comes); only an earlier one is re-filed at
//! once. A request that finds the timer in use (HTTP/2 streams of one connection) or gone (a
//! request that was dropped mid-wait takes its timer along) makes its own.

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
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_reused_timer_fires_at_each_new_deadline_earlier_or_later() {
        let timers = ResponseTimer::default();
        let t0 = Instant::now();
        let first = timers.start(t0 + Duration::from_secs(60));
        let first_at = &*first as *const Sleep;
        timers.put(first);
        // A later deadline, then an earlier one: the same timer, fired at each.
        for (after, secs) in [(Duration::from_secs(90), 90), (Duration::from_secs(5), 95)] {
            let deadline = Instant::now() + after;
            let mut timer = timers.start(deadline);
            assert_eq!(&*timer as *const Sleep, first_at, "the connection's timer is reused");
            timer.as_mut().await;
            assert_eq!(Instant::now(), deadline);
            assert_eq!(Instant::now() - t0, Duration::from_secs(secs));
            timers.put(timer);
        }
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
