//! A Service port is the Service's port.
//!
//! Ingress (`service.port.number` / `service.port.name`), Gateway API and users all name the
//! Service's `port`, not the container's. An EndpointSlice lists, per endpoint set, ports named
//! after the Service port (`name`) with the *target* port number resolved for those pods. So the
//! exact resolution is: Service port (by name or number) → its name → the slice port of that name,
//! per slice; the same name may map to different numbers in different slices (a rolling change of
//! `targetPort`), which is why the last step happens per slice.
//!
//! Compatibility: before Services were watched, a BalancerPool's `backend.service.port` number was
//! matched against the slices' port numbers (the target port). That keeps working where it cannot
//! be misread: when the Service is not (yet) known, or when the number is none of the Service's
//! ports, the reference is used against the slices as it is (and the second case is logged,
//! because `port: 8080` then means the target port, not a Service port).

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// What a Service port reference resolves to, for [`super::derive::slice_members`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortResolution {
    /// The Service has this port: match slice ports by this name (`""` for an unnamed port).
    ServicePort(IntOrString),
    /// The Service is not known: the reference is matched against slice ports as written.
    ServiceUnknown(IntOrString),
    /// The Service is known but has no such port: a number is still tried as a target port
    /// (the old BalancerPool meaning); a name matches nothing.
    NotAServicePort(IntOrString),
}

impl PortResolution {
    /// The key to match slice ports with.
    pub fn slice_port(&self) -> &IntOrString {
        match self {
            PortResolution::ServicePort(p) | PortResolution::ServiceUnknown(p) | PortResolution::NotAServicePort(p) => {
                p
            }
        }
    }
}

/// Resolves `port` (as written in a BalancerPool or an Ingress backend) through `service`.
pub fn resolve(service: Option<&Service>, port: &IntOrString) -> PortResolution {
    let Some(service) = service else {
        return PortResolution::ServiceUnknown(port.clone());
    };
    let ports = service.spec.as_ref().and_then(|s| s.ports.as_deref()).unwrap_or_default();
    let tcp = |p: &&k8s_openapi::api::core::v1::ServicePort| p.protocol.as_deref().unwrap_or("TCP") == "TCP";
    let found = match port {
        IntOrString::String(name) => ports.iter().filter(tcp).find(|p| p.name.as_deref().unwrap_or("") == name),
        IntOrString::Int(n) => ports.iter().filter(tcp).find(|p| p.port == *n),
    };
    match found {
        Some(p) => PortResolution::ServicePort(IntOrString::String(p.name.clone().unwrap_or_default())),
        None => PortResolution::NotAServicePort(port.clone()),
    }
}

/// A problem of a Service reference worth telling the user, or `None`.
pub fn problem(service: &str, r: &PortResolution) -> Option<String> {
    match r {
        PortResolution::NotAServicePort(IntOrString::Int(n)) => Some(format!(
            "Service {service} has no port {n}; matching {n} against the endpoints' (target) ports instead"
        )),
        PortResolution::NotAServicePort(IntOrString::String(name)) => {
            Some(format!("Service {service} has no port named {name:?}"))
        }
        PortResolution::ServiceUnknown(_) | PortResolution::ServicePort(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

    use super::*;

    fn service(ports: &[(Option<&str>, i32, &str)]) -> Service {
        Service {
            spec: Some(ServiceSpec {
                ports: Some(
                    ports
                        .iter()
                        .map(|(name, port, target)| ServicePort {
                            name: name.map(Into::into),
                            port: *port,
                            target_port: Some(match target.parse::<i32>() {
                                Ok(n) => IntOrString::Int(n),
                                Err(_) => IntOrString::String((*target).into()),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_number_is_the_service_port_and_becomes_its_name() {
        let s = service(&[(Some("http"), 80, "8080"), (Some("admin"), 9000, "admin-port")]);
        let r = resolve(Some(&s), &IntOrString::Int(80));
        assert_eq!(r, PortResolution::ServicePort(IntOrString::String("http".into())));
        let r = resolve(Some(&s), &IntOrString::Int(9000));
        assert_eq!(r.slice_port(), &IntOrString::String("admin".into()));
    }

    #[test]
    fn a_name_is_the_service_port_name() {
        let s = service(&[(Some("http"), 80, "web")]);
        let r = resolve(Some(&s), &IntOrString::String("http".into()));
        assert_eq!(r, PortResolution::ServicePort(IntOrString::String("http".into())));
        // The container port's name is not a Service port name.
        let r = resolve(Some(&s), &IntOrString::String("web".into()));
        assert!(matches!(r, PortResolution::NotAServicePort(_)));
        assert!(problem("shop", &r).unwrap().contains("no port named"));
    }

    #[test]
    fn an_unnamed_single_port_matches_the_unnamed_slice_port() {
        let s = service(&[(None, 80, "8080")]);
        let r = resolve(Some(&s), &IntOrString::Int(80));
        assert_eq!(r.slice_port(), &IntOrString::String(String::new()));
    }

    #[test]
    fn compatible_rules_for_the_old_meaning() {
        // Unknown Service: the reference is used as written.
        let r = resolve(None, &IntOrString::Int(8080));
        assert_eq!(r, PortResolution::ServiceUnknown(IntOrString::Int(8080)));
        assert!(problem("shop", &r).is_none());
        // Known Service, the number is only a target port: still tried, and reported.
        let s = service(&[(Some("http"), 80, "8080")]);
        let r = resolve(Some(&s), &IntOrString::Int(8080));
        assert_eq!(r.slice_port(), &IntOrString::Int(8080));
        assert!(problem("shop", &r).unwrap().contains("target"));
    }

    #[test]
    fn udp_ports_are_not_served() {
        let mut s = service(&[(Some("dns"), 53, "53")]);
        if let Some(p) = s.spec.as_mut().and_then(|s| s.ports.as_mut()) {
            p[0].protocol = Some("UDP".into());
        }
        assert!(matches!(resolve(Some(&s), &IntOrString::Int(53)), PortResolution::NotAServicePort(_)));
    }
}
