//! Every integration test in one binary. Each `tests/*.rs` file would be its own executable
//! linking the whole crate and its dependencies (about 300 MB apiece with debug info); one
//! binary keeps a clean `cargo test` build small and links once. Modules are named after what
//! they test; `support` holds the shared fixtures (members, proxy, client, fake API server).

mod support;

mod admin;
mod browser;
mod chart;
mod check;
mod controller_binary;
mod controller_crd;
mod controller_fake_apiserver;
mod controller_leader;
mod controller_recovery;
mod controller_routing;
mod controller_scope;
mod controller_status;
mod crd;
mod gateway;
mod gateway_controller;
mod health;
mod hostile;
mod ingress;
mod manager_controller;
mod manager_live;
mod manager_overrides;
mod observability;
mod proxy_clients;
mod proxy_failover;
mod proxy_lifecycle;
mod proxy_members;
mod proxy_memory;
mod proxy_pool;
mod proxy_routing;
mod proxy_streaming;
mod proxy_timeouts;
mod proxy_tunnels;
mod smoke;
mod sticky;
mod tls;
