//! The kube-free, hyper-free model: validated pools, members, the routing table, route
//! extraction and lb methods. The standalone loader, the controller and the proxy are adapters
//! around it, and its tests need neither a client nor a socket.

#[cfg(test)]
mod boundary;
pub mod config;
pub mod gateway;
pub mod lb;
pub mod member;
pub mod names;
pub mod path;
pub mod pool;
pub mod route;
mod schedule;
pub mod session;
pub mod sticky;
pub mod table;
#[cfg(test)]
pub(crate) mod testing;

pub use config::{PoolConfig, PoolId};
pub use member::{BusyGuard, Clock, FailureKind, Member, MemberRuntime};
pub use pool::{Balanced, Choice, Pool, Tried, Unavailable};
pub use route::Route;
pub use table::RoutingTable;
