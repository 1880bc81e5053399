//! A member and its runtime state.
//!
//! The runtime state ([`MemberRuntime`]) is shared by `Arc` between successive routing tables:
//! a reload or reconcile that keeps a member (same route, same address) keeps its counters, its
//! lb bookkeeping and its error state. Everything in it is an atomic so the request path never
//! takes a lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use super::config::MemberConfig;
use crate::api::MemberStatus;

/// Counters and health of one member that outlive table rebuilds.
#[derive(Debug, Default)]
pub struct MemberRuntime {
    /// Apache's `lbstatus`: the ByRequests credit.
    pub lbstatus: AtomicI64,
    /// Requests in flight (Apache `busy`).
    pub busy: AtomicU64,
    /// Times chosen (Apache `elected`).
    pub elected: AtomicU64,
    /// Failed attempts (connect refused, reset, timeout).
    pub errors: AtomicU64,
    /// Milliseconds on the [`Clock`] until which the member is in error; 0 when it is not.
    pub error_until_ms: AtomicU64,
    /// Request bytes sent to the member.
    pub bytes_to: AtomicU64,
    /// Response bytes received from the member.
    pub bytes_from: AtomicU64,
}

impl MemberRuntime {
    /// Whether the member is in error at `now_ms`. Once the error time has passed the member is
    /// tried again (Apache `retry`): no request is needed to "clear" it.
    pub fn in_error(&self, now_ms: u64) -> bool {
        self.error_until_ms.load(Relaxed) > now_ms
    }

    /// Puts the member in error until `now_ms + retry_after_ms`.
    pub fn set_error(&self, now_ms: u64, retry_after_ms: u64) {
        self.errors.fetch_add(1, Relaxed);
        self.error_until_ms.store(now_ms.saturating_add(retry_after_ms).max(1), Relaxed);
    }
}

/// A member of a pool: validated configuration plus shared runtime state.
#[derive(Debug, Clone)]
pub struct Member {
    /// What the spec says.
    pub config: MemberConfig,
    /// What happened to it; survives rebuilds.
    pub runtime: Arc<MemberRuntime>,
}

impl Member {
    /// The member's route.
    pub fn route(&self) -> &str {
        &self.config.route
    }

    /// May take new (non-sticky) sessions at normal priority.
    pub fn takes_new(&self, now_ms: u64) -> bool {
        self.config.status == MemberStatus::Ok && !self.runtime.in_error(now_ms)
    }

    /// May take new sessions when no normal member can.
    pub fn takes_new_as_standby(&self, now_ms: u64) -> bool {
        self.config.status == MemberStatus::HotStandby && !self.runtime.in_error(now_ms)
    }

    /// May take requests of sessions already pinned to it.
    pub fn takes_sticky(&self, now_ms: u64) -> bool {
        matches!(self.config.status, MemberStatus::Ok | MemberStatus::Drain | MemberStatus::HotStandby)
            && !self.runtime.in_error(now_ms)
    }

    /// A short state name for status and the balancer-manager.
    pub fn state_name(&self, now_ms: u64) -> &'static str {
        if self.runtime.in_error(now_ms) {
            return "Error";
        }
        match self.config.status {
            MemberStatus::Ok => "Ok",
            MemberStatus::Drain => "Drain",
            MemberStatus::Disabled => "Disabled",
            MemberStatus::HotStandby => "HotStandby",
            MemberStatus::Stopped => "Stopped",
        }
    }
}

/// Monotonic milliseconds since the clock was made: the unit of error deadlines. Tests drive
/// the core with explicit `now_ms` values instead.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: std::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock { start: std::time::Instant::now() }
    }
}

impl Clock {
    /// Milliseconds since the clock started, at least 1.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }
}
