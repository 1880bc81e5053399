//! The named choices a user writes in a pool (`lbMethod`, member `status`, cookie `mode`,
//! `secure`, `sameSite`, health-check `method`) and the validated model keeps as they are.
//!
//! They live in the core so that the model needs nothing from the user-facing `api` module; `api`
//! re-exports them, and their serde and JSON-schema forms are the CRD's.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The lb method (Apache `lbmethod`, plus `LeastLatency`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum LbMethodName {
    /// Apache's weighted request counting.
    #[default]
    ByRequests,
    /// Apache's weighted traffic counting: fewest bytes to and from the member per loadFactor.
    ByTraffic,
    /// Apache's busyness: fewest requests in flight, ties by request counting.
    ByBusyness,
    /// Spare capacity reported by members (`X-Heartbeat: ready=N` on health checks), like
    /// Apache mod_heartmonitor; members that stop reporting fall back to loadFactor.
    Heartbeat,
    /// Power of two choices over latency × requests in flight (as linkerd2-proxy and Envoy):
    /// keeps tail latency low when one member slows down.
    LeastLatency,
}

/// When the route cookie carries `Secure`.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CookieSecure {
    /// When the client connection is TLS, or a trusted front proxy said `https`.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

impl<'de> Deserialize<'de> for CookieSecure {
    /// Also reads the older boolean form: `true` is `Always`, `false` is `Never`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(CookieSecure::Always),
            Raw::Bool(false) => Ok(CookieSecure::Never),
            Raw::Name(n) => match n.as_str() {
                "Auto" => Ok(CookieSecure::Auto),
                "Always" => Ok(CookieSecure::Always),
                "Never" => Ok(CookieSecure::Never),
                _ => Err(serde::de::Error::unknown_variant(&n, &["Auto", "Always", "Never"])),
            },
        }
    }
}

/// HAProxy's cookie modes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CookieMode {
    /// The proxy adds its own cookie `name=.route`.
    #[default]
    Insert,
    /// The app's session cookie value is prefixed with `route~` on the way out, stripped on the
    /// way in.
    Prefix,
    /// The app's session cookie value is replaced by `.route` on the way out.
    Rewrite,
}

/// Cookie `SameSite` attribute.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SameSite {
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=Lax`.
    Lax,
    /// `SameSite=None` (requires `secure` other than `Never`).
    None,
}

/// Administrative member states, as in Apache's balancer-manager.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MemberStatus {
    /// Serves sticky and new traffic.
    #[default]
    Ok,
    /// Keeps its sticky sessions, gets no new ones.
    Drain,
    /// Gets nothing; its sticky sessions fail over.
    Disabled,
    /// Used only when no normal member is usable.
    HotStandby,
    /// Gets nothing (an operator stopped it).
    Stopped,
}

/// Health-check request methods.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum CheckMethod {
    /// `GET`.
    #[default]
    GET,
    /// `HEAD`.
    HEAD,
    /// `OPTIONS`.
    OPTIONS,
}
