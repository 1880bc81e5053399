//! routeid: a Kubernetes-native sticky-session load balancer.
//!
//! The crate is a library with a thin binary (`src/main.rs`). The layout follows the
//! architecture: [`api`] is the user-facing resource, [`core`] the kube-free, hyper-free model,
//! [`proxy`] the data plane, [`admin`] the admin listener, [`metrics`] the Prometheus series both
//! of them share, [`standalone`] the YAML loader and [`demo`] the no-cluster demo.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod check;
pub mod cli;
pub mod controller;
pub mod core;
pub mod demo;
pub mod log_writer;
pub mod metrics;
pub mod proxy;
pub mod runtime;
pub mod standalone;

#[cfg(test)]
mod fuzz;
