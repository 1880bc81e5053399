//! The Kubernetes control plane: BalancerPools and EndpointSlices in, routing tables out.

pub mod derive;
