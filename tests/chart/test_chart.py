"""charts/routeid, rendered by Helm for the default values, one watched namespace, sidecar mode
and everything enabled (charts/routeid/ci/*-values.yaml): what a cluster would receive."""

import json
import re

import pytest
import yaml
from conftest import CHART, ROOT, SCENARIOS, rendered

import helmrender
import k8s_schema

NAMESPACED_KINDS = {
    "ServiceAccount", "Service", "Secret", "ConfigMap", "Deployment", "Role", "RoleBinding",
    "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule",
}  # fmt: skip
CLUSTER_KINDS = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace", "IngressClass"}

# What the controller reads and writes (src/controller), and nothing more.
WATCH_RULES = {
    ("routeid.io", "balancerpools"): ["get", "list", "watch", "patch"],  # patch: balancer-manager spec.members
    ("routeid.io", "balancerpools/status"): ["patch"],  # status merge patches by the Lease holder
    ("discovery.k8s.io", "endpointslices"): ["get", "list", "watch"],
    ("", "services"): ["get", "list", "watch"],  # a backend port is the Service's port
    ("events.k8s.io", "events"): ["create", "patch"],  # kube-runtime's Recorder
}
# Ingress mode only: the Ingresses served and their status.loadBalancer.
INGRESS_RULES = {
    ("networking.k8s.io", "ingresses"): ["get", "list", "watch"],
    ("networking.k8s.io", "ingresses/status"): ["update", "patch"],
}
# Cluster-scoped, so always in a ClusterRole (ingress mode).
INGRESS_CLASS_RULES = {("networking.k8s.io", "ingressclasses"): ["get", "list", "watch"]}
# Ingress mode: the Gateway API's namespaced kinds, and the status of those served.
GATEWAY_RULES = {
    ("gateway.networking.k8s.io", "gateways"): ["get", "list", "watch"],
    ("gateway.networking.k8s.io", "httproutes"): ["get", "list", "watch"],
    ("gateway.networking.k8s.io", "referencegrants"): ["get", "list", "watch"],
    ("gateway.networking.k8s.io", "gateways/status"): ["update", "patch"],
    ("gateway.networking.k8s.io", "httproutes/status"): ["update", "patch"],
    ("gateway.networking.x-k8s.io", "xbackendtrafficpolicies"): ["get", "list", "watch"],
}
# Cluster-scoped Gateway API reads (GatewayClasses, namespace labels for allowedRoutes Selector).
GATEWAY_CLASS_RULES = {
    ("gateway.networking.k8s.io", "gatewayclasses"): ["get", "list", "watch"],
    ("gateway.networking.k8s.io", "gatewayclasses/status"): ["update", "patch"],
    ("", "namespaces"): ["get", "list", "watch"],
    ("apiextensions.k8s.io", "customresourcedefinitions"): ["get"],
}
# Ingress mode serves TLS: the Secrets pools name (one watch each, fieldSelector metadata.name).
INGRESS_WATCH_RULES = {**WATCH_RULES, ("", "secrets"): ["get", "list", "watch"]}
# kube-lease-manager; list + watch: a standby sees a released Lease at once.
LEASE_RULES = {("coordination.k8s.io", "leases"): ["get", "list", "watch", "create", "update", "patch"]}


def rules_of(role: dict) -> dict:
    out = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                key = (group, res)
                assert key not in out, f"{role['metadata']['name']}: {key} in two rules"
                assert not rule.get("resourceNames"), rule
                out[key] = rule["verbs"]
    return out


def container(rel: helmrender.Release) -> dict:
    pod = rel.one("Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return pod["containers"][0]


def sidecar_snippet(rel: helmrender.Release) -> dict:
    cm = rel.one("ConfigMap")
    return yaml.safe_load(cm["data"]["sidecar.yaml"])


def args_of(c: dict) -> dict:
    """--flag=value -> {flag: value}; --flag -> {flag: True}."""
    assert c["args"][0] == "controller"
    out = {}
    for a in c["args"][1:]:
        assert a.startswith("--"), a
        k, _, v = a[2:].partition("=")
        assert k not in out, f"--{k} given twice"
        out[k] = v if _ else True
    return out


# --- structure -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_helm_lint_is_clean(name):
    values = SCENARIOS[name][0]
    assert helmrender.lint(values or None) == []


def test_every_object_is_a_kubernetes_object(scenario):
    name, rel = scenario
    assert rel.objects, name
    seen = set()
    for o in rel.objects + rel.crds:
        assert isinstance(o.get("apiVersion"), str) and o["apiVersion"], o
        assert isinstance(o.get("kind"), str) and o["kind"], o
        meta = o.get("metadata") or {}
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", meta.get("name", "")), meta
        assert len(meta["name"]) <= 63 or o["kind"] == "CustomResourceDefinition"
        if o["kind"] in NAMESPACED_KINDS:
            assert meta.get("namespace"), f"{o['kind']} {meta['name']} has no namespace"
        else:
            assert o["kind"] in CLUSTER_KINDS, o["kind"]
            assert "namespace" not in meta
        key = (o["kind"], meta.get("namespace"), meta["name"])
        assert key not in seen, f"{key} rendered twice"
        seen.add(key)
        if o["kind"] not in CLUSTER_KINDS | {"ConfigMap", "Secret"}:
            labels = meta["labels"]
            assert labels["app.kubernetes.io/name"] == "routeid"
            assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_every_field_exists_in_the_kubernetes_api(scenario):
    name, rel = scenario
    found = [p for o in rel.objects + rel.crds for p in k8s_schema.problems(o)]
    if name == "sidecar":  # the snippet is a pod spec fragment
        snippet = sidecar_snippet(rel)
        found += k8s_schema.check_as(snippet, "V1PodSpec", "sidecar.yaml")
    assert not found, "\n".join(found)


def test_kinds_per_mode():
    kinds = lambda n: sorted({o["kind"] for o in rendered(n).objects})  # noqa: E731
    assert kinds("default") == [
        "ClusterRole", "ClusterRoleBinding", "Deployment", "IngressClass", "PodDisruptionBudget", "Role",
        "RoleBinding", "Service", "ServiceAccount",
    ]  # fmt: skip
    # One namespace: IngressClasses are cluster-scoped, so reading them takes a ClusterRole.
    assert kinds("namespaced") == [
        "ClusterRole", "ClusterRoleBinding", "Deployment", "IngressClass", "PodDisruptionBudget", "Role",
        "RoleBinding", "Service", "ServiceAccount",
    ]  # fmt: skip
    # Sidecar: only the RBAC and the snippet: no pod, no Service, nothing cluster-wide.
    assert kinds("sidecar") == ["ConfigMap", "Role", "RoleBinding", "ServiceAccount"]
    assert kinds("full") == [
        "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "IngressClass", "PodDisruptionBudget",
        "PrometheusRule", "Role", "RoleBinding", "Secret", "Service", "ServiceAccount", "ServiceMonitor",
    ]  # fmt: skip


def test_crd_is_the_generated_one(scenario):
    _, rel = scenario
    assert (CHART / "crds" / "balancerpool.yaml").read_bytes() == (ROOT / "crds" / "balancerpool.yaml").read_bytes(), (
        "charts/routeid/crds/balancerpool.yaml differs from crds/balancerpool.yaml: "
        "cp crds/balancerpool.yaml charts/routeid/crds/ && python3 scripts/render-deploy.py"
    )
    assert rel.crds == [yaml.safe_load((ROOT / "crds" / "balancerpool.yaml").read_text())]


# --- RBAC ----------------------------------------------------------------------------------


def check_binding(rel, binding: dict, role: dict, sa_name: str, sa_ns: str):
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": role["kind"],
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_ns}]
    assert binding["metadata"].get("namespace") == role["metadata"].get("namespace")
    sa = rel.one("ServiceAccount")
    assert (sa["metadata"]["name"], sa["metadata"]["namespace"]) == (sa_name, sa_ns)


def test_rbac_all_namespaces():
    rel = rendered("default")
    role, binding = rel.one("ClusterRole"), rel.one("ClusterRoleBinding")
    assert rules_of(role) == (
        INGRESS_WATCH_RULES | INGRESS_RULES | INGRESS_CLASS_RULES | GATEWAY_RULES | GATEWAY_CLASS_RULES
    )
    check_binding(rel, binding, role, "routeid", "routeid")
    lease, lease_binding = rel.one("Role"), rel.one("RoleBinding")
    assert lease["metadata"] == {**lease["metadata"], "name": "routeid-lease", "namespace": "routeid"}
    assert rules_of(lease) == LEASE_RULES
    check_binding(rel, lease_binding, lease, "routeid", "routeid")
    a = args_of(container(rel))
    assert "namespace" not in a
    assert a["lease-namespace"] == "routeid"


def test_rbac_one_namespace():
    rel = rendered("namespaced")
    # Only cluster-scoped kinds (IngressClasses, GatewayClasses, Namespaces) are read cluster-wide.
    classes = rel.one("ClusterRole")
    assert classes["metadata"]["name"] == "routeid-ingressclasses"
    assert rules_of(classes) == INGRESS_CLASS_RULES | GATEWAY_CLASS_RULES
    check_binding(rel, rel.one("ClusterRoleBinding"), classes, "routeid", "routeid")
    watch = rel.one("Role", "routeid")
    assert watch["metadata"]["namespace"] == "web"
    assert rules_of(watch) == INGRESS_WATCH_RULES | INGRESS_RULES | GATEWAY_RULES
    check_binding(rel, rel.one("RoleBinding", "routeid"), watch, "routeid", "routeid")
    lease = rel.one("Role", "routeid-lease")
    assert lease["metadata"]["namespace"] == "routeid" and rules_of(lease) == LEASE_RULES
    check_binding(rel, rel.one("RoleBinding", "routeid-lease"), lease, "routeid", "routeid")
    assert args_of(container(rel))["namespace"] == "web"


def test_rbac_sidecar():
    rel = rendered("sidecar")
    assert not rel.of_kind("ClusterRole") and not rel.of_kind("IngressClass")
    watch, lease = rel.one("Role", "routeid-sidecar"), rel.one("Role", "routeid-sidecar-lease")
    assert watch["metadata"]["namespace"] == lease["metadata"]["namespace"] == "demo"
    assert rules_of(watch) == WATCH_RULES and rules_of(lease) == LEASE_RULES
    check_binding(rel, rel.one("RoleBinding", "routeid-sidecar"), watch, "routeid-sidecar", "demo")
    check_binding(rel, rel.one("RoleBinding", "routeid-sidecar-lease"), lease, "routeid-sidecar", "demo")


def test_rbac_lease_namespace_and_disabled_election():
    rel = rendered("full")
    assert rel.one("Role", "edge-routeid-lease")["metadata"]["namespace"] == "routeid-system"
    assert args_of(container(rel))["lease-namespace"] == "routeid-system"
    rel = helmrender.render({"replicas": 1, "leaderElection": {"enabled": False}})
    assert not rel.of_kind("Role") and not rel.of_kind("RoleBinding")
    a = args_of(container(rel))
    assert a["no-leader-election"] is True and "lease-namespace" not in a


def test_tls_can_be_switched_off():
    rel = helmrender.render({"tls": {"enabled": False, "port": 8443, "servicePort": 443}})
    a = args_of(container(rel))
    assert "tls-listen" not in a and "default-tls-secret" not in a
    assert [p["name"] for p in rel.one("Service")["spec"]["ports"]] == ["http"]
    assert (
        rules_of(rel.one("ClusterRole"))
        == WATCH_RULES | INGRESS_RULES | INGRESS_CLASS_RULES | GATEWAY_RULES | GATEWAY_CLASS_RULES
    ), "no Secret access without TLS"


def test_rbac_and_service_account_can_be_left_out():
    rel = helmrender.render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "mine"}})
    assert {o["kind"] for o in rel.objects} == {"Deployment", "Service", "PodDisruptionBudget", "IngressClass"}
    assert rel.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


# --- the pod -------------------------------------------------------------------------------


def pod_and_container(name: str):
    rel = rendered(name)
    if name == "sidecar":
        return None, sidecar_snippet(rel)["initContainers"][0]
    return rel.one("Deployment")["spec"]["template"]["spec"], container(rel)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_security_context(name):
    pod, c = pod_and_container(name)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532  # the Dockerfile's USER
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in sc
    if pod is not None:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not pod.get("hostNetwork") and not pod.get("hostPID")


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_probes_on_the_admin_port(name):
    _, c = pod_and_container(name)
    a = args_of(c)
    admin_port = int(a["admin-listen"].rsplit(":", 1)[1])
    assert a["admin-listen"].startswith("0.0.0.0:"), "the kubelet probes the pod IP"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert admin_port in ports.values()
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": admin_port}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": admin_port}
    if name == "sidecar":
        assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": admin_port}
    else:
        https = int(a["tls-listen"].rsplit(":", 1)[1])
        assert ports == {"http": int(a["listen"].rsplit(":", 1)[1]), "https": https, "admin": admin_port}


@pytest.mark.parametrize("name", ["default", "namespaced", "full"])
def test_shutdown_drains_before_the_kill(name):
    pod, c = pod_and_container(name)
    a = args_of(c)
    drain = int(a["drain-timeout"].rstrip("s"))
    sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert "exec" not in c["lifecycle"]["preStop"], "the image has no shell"
    assert sleep >= 1
    assert pod["terminationGracePeriodSeconds"] >= sleep + drain
    values = SCENARIOS[name][0]
    assert drain == values.get("proxy", {}).get("drainTimeoutSeconds", 30)


def test_termination_grace_default_and_explicit():
    pod, _ = pod_and_container("default")
    assert pod["terminationGracePeriodSeconds"] == 5 + 30 + 5
    pod, _ = pod_and_container("full")
    assert pod["terminationGracePeriodSeconds"] == 90
    rel = helmrender.render({"shutdown": {"preStopSleepSeconds": 0}})
    assert "lifecycle" not in container(rel)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_downward_api_and_manager_token(name):
    _, c = pod_and_container(name)
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    ref = env["ROUTEID_MANAGER_TOKEN"]["valueFrom"]["secretKeyRef"]
    rel = rendered(name)
    if name == "full":  # createSecret: the chart's Secret, required
        secret = rel.one("Secret")
        assert ref == {"name": secret["metadata"]["name"], "key": "token", "optional": False}
        assert secret["metadata"]["name"] == "edge-routeid-manager"
        import base64

        assert len(base64.b64decode(secret["data"]["token"])) == 40
    else:  # read if the operator created it
        assert ref["optional"] is True and ref["key"] == "token"
        assert not rel.of_kind("Secret")
    assert "--manager-token" not in " ".join(c["args"]), "a token in args is visible in the pod spec"


def test_manager_generated_token_survives_upgrades():
    """The generated token is read back (Helm `lookup`) when the Secret exists: an upgrade keeps it."""
    import base64

    values = {"manager": {"createSecret": True}}
    old = base64.b64encode(b"the-token-from-the-first-install").decode()
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "routeid-manager", "namespace": "routeid"},
        "data": {"token": old},
    }
    again = helmrender.render(values, existing=[secret]).one("Secret")
    assert again["data"]["token"] == old
    fresh = helmrender.render(values).one("Secret")["data"]["token"]
    assert fresh != old and len(base64.b64decode(fresh)) == 40


def test_manager_existing_secret():
    c = container(helmrender.render({"manager": {"existingSecret": "ops-token", "secretKey": "t"}}))
    env = {e["name"]: e for e in c["env"]}
    assert env["ROUTEID_MANAGER_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "ops-token", "key": "t", "optional": False}


def test_default_args_match_the_cli_defaults():
    a = args_of(container(rendered("default")))
    assert a == {
        "listen": "0.0.0.0:8080",
        "admin-listen": "0.0.0.0:9901",
        "tls-listen": "0.0.0.0:8443",
        "ingress-class": "routeid",
        "default-class": "true",
        "gateway-http-ports": "80",
        "gateway-https-ports": "443",
        "lease-namespace": "routeid",
        "drain-timeout": "30s",
        "client-header-timeout": "15s",
        "client-idle-timeout": "60s",
        "log-format": "json",
    }


def test_full_values_reach_the_pod():
    rel = rendered("full")
    pod, c = pod_and_container("full")
    a = args_of(c)
    assert a["ingress-class"] == "public" and a["default-class"] == "false"
    assert a["via"] is True and a["no-access-log"] is True
    assert a["client-idle-timeout"] == "2m" and a["log-format"] == "text"
    assert a["identity"] == "$(POD_NAME)"
    assert a["tls-listen"] == "0.0.0.0:9443" and a["handshake-timeout"] == "5s"
    assert a["default-tls-secret"] == "routeid-system/wildcard-example-com"
    assert a["trusted-proxies"] == "10.0.0.0/8,192.168.7.1"
    assert a["proxy-protocol"] is True and a["tls-proxy-protocol"] is True
    assert {"name": "https", "containerPort": 9443, "protocol": "TCP"} in c["ports"]
    assert c["image"] == "registry.example.com/platform/routeid@sha256:" + "0123456789abcdef" * 4
    assert c["imagePullPolicy"] == "Always"
    assert rel.one("Deployment")["spec"]["replicas"] == 3
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in pod["affinity"]
    assert {"name": "TZ", "value": "UTC"} in c["env"]
    assert c["resources"]["limits"] == {"cpu": "2", "memory": "512Mi"}
    sel = {"app.kubernetes.io/name": "routeid", "app.kubernetes.io/instance": "edge"}
    assert [t["labelSelector"] for t in pod["topologySpreadConstraints"]] == [{"matchLabels": sel}] * 2
    tmpl = rel.one("Deployment")["spec"]["template"]["metadata"]
    assert tmpl["annotations"] == {"example.com/team": "platform"} and tmpl["labels"]["team"] == "platform"
    sa = rel.one("ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


def test_selectors_match_the_pods(scenario):
    name, rel = scenario
    if name == "sidecar":
        return
    dep = rel.one("Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for svc in rel.of_kind("Service"):
        assert svc["spec"]["selector"].items() <= labels.items()
        c_ports = {p["name"] for p in container(rel)["ports"]}
        assert all(p["targetPort"] in c_ports for p in svc["spec"]["ports"])
    pdb = rel.one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for t in dep["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert t["labelSelector"]["matchLabels"].items() <= labels.items()


# --- Services, metrics, PDB ----------------------------------------------------------------


def test_services_default():
    rel = rendered("default")
    svc = rel.one("Service")
    assert svc["metadata"]["name"] == "routeid"
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"},
    ]
    assert "externalTrafficPolicy" not in svc["spec"]
    assert not rel.of_kind("ServiceMonitor"), "no ServiceMonitor unless enabled"
    assert not rel.of_kind("PrometheusRule"), "no PrometheusRule unless enabled"
    assert not rel.of_kind("ConfigMap"), "no dashboard unless enabled"


def test_services_full():
    rel = rendered("full")
    proxy, admin = rel.one("Service", "edge-routeid"), rel.one("Service", "edge-routeid-admin")
    assert proxy["spec"]["type"] == "LoadBalancer"
    assert proxy["spec"]["externalTrafficPolicy"] == "Local"
    assert proxy["spec"]["ports"][0]["nodePort"] == 30080
    assert proxy["spec"]["ports"][1] == {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP", "nodePort": 30443}
    assert proxy["spec"]["loadBalancerClass"] == "service.k8s.aws/nlb"
    assert proxy["spec"]["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    assert proxy["metadata"]["labels"]["exposure"] == "public"
    assert admin["spec"]["type"] == "ClusterIP"
    assert admin["spec"]["ports"] == [{"name": "admin", "port": 9901, "targetPort": "admin", "protocol": "TCP"}]
    sm = rel.one("ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["selector"]["matchLabels"].items() <= admin["metadata"]["labels"].items()
    assert not sm["spec"]["selector"]["matchLabels"].items() <= proxy["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["routeid"]}
    assert sm["spec"]["endpoints"] == [{"port": "admin", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}]


@pytest.mark.parametrize("svc_type", ["NodePort", "LoadBalancer"])
def test_service_types(svc_type):
    rel = helmrender.render({"service": {"type": svc_type, "externalTrafficPolicy": "Cluster"}})
    svc = rel.one("Service")
    assert svc["spec"]["type"] == svc_type and svc["spec"]["externalTrafficPolicy"] == "Cluster"
    assert svc_type in rel.notes


def test_admin_service_alone():
    rel = helmrender.render({"adminService": {"enabled": True}})
    assert rel.one("Service", "routeid-admin")["spec"]["type"] == "ClusterIP"
    assert not rel.of_kind("ServiceMonitor")


def test_pdb():
    assert rendered("default").one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    spec = rendered("full").one("PodDisruptionBudget")["spec"]
    assert spec["minAvailable"] == 2 and "maxUnavailable" not in spec
    assert not helmrender.render({"podDisruptionBudget": {"enabled": False}}).of_kind("PodDisruptionBudget")


# --- sidecar -------------------------------------------------------------------------------


def test_sidecar_snippet():
    rel = rendered("sidecar")
    cm = rel.one("ConfigMap", "routeid-sidecar-snippet")
    snippet = yaml.safe_load(cm["data"]["sidecar.yaml"])
    assert snippet["serviceAccountName"] == cm["data"]["serviceAccountName"] == "routeid-sidecar"
    c = snippet["initContainers"][0]
    assert c["restartPolicy"] == "Always"  # a native sidecar
    a = args_of(c)
    assert a["namespace"] == "$(POD_NAMESPACE)" and a["lease-namespace"] == "$(POD_NAMESPACE)"
    assert a["listen"] == "127.0.0.1:15001"
    assert a["ingress-class"] == "routeid-sidecar" and a["default-class"] == "false"
    assert a["watch-ingresses"] == "false", "a sidecar serves BalancerPools only"
    assert a["watch-gateways"] == "false"
    assert "lifecycle" not in c  # the app's containers stop first; no endpoint to leave
    assert "kubectl -n demo get configmap routeid-sidecar-snippet" in rel.notes


def test_sidecar_example_is_the_chart_snippet():
    """examples/sidecar/20-frontend.yaml carries the container the chart prints."""
    snippet = sidecar_snippet(rendered("sidecar"))
    docs = list(yaml.safe_load_all((ROOT / "examples/sidecar/20-frontend.yaml").read_text()))
    dep = next(d for d in docs if d["kind"] == "Deployment")
    spec = dep["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == snippet["serviceAccountName"]
    assert spec["initContainers"] == snippet["initContainers"]


# --- values that must be refused -----------------------------------------------------------

BAD_VALUES = [
    ({"replicas": "two"}, "/replicas"),
    ({"replicas": -1}, "/replicas"),
    ({"replica": 3}, "replica"),  # a typo: unknown keys are refused
    ({"mode": "gateway"}, "/mode"),
    ({"service": {"type": "Ingress"}}, "/service/type"),
    ({"service": {"externalTrafficPolicy": "Nearest"}}, "/service/externalTrafficPolicy"),
    ({"proxy": {"port": 70000}}, "/proxy/port"),
    ({"proxy": {"drainTimeoutSeconds": "30s"}}, "/proxy/drainTimeoutSeconds"),
    ({"proxy": {"clientIdleTimeout": "a minute"}}, "/proxy/clientIdleTimeout"),
    ({"logFormat": "xml"}, "/logFormat"),
    ({"watchNamespace": "Not_A_Namespace"}, "/watchNamespace"),
    ({"image": {"digest": "latest"}}, "/image/digest"),
    ({"extraArgs": ["controller"]}, "/extraArgs/0"),
    ({"sidecar": {"listen": "localhost:15001"}}, "/sidecar/listen"),
    ({"defaultTlsSecret": "just-a-name"}, "/defaultTlsSecret"),
    ({"trustedProxies": "10.0.0.0/8"}, "/trustedProxies"),
    ({"trustedProxies": ["everyone"]}, "/trustedProxies/0"),
    ({"tls": {"enabled": True, "port": 0, "servicePort": 443}}, "/tls/port"),
    ({"proxyProtocol": {"tcp": True}}, "tcp"),
    # Checks across values, in the templates:
    ({"shutdown": {"terminationGracePeriodSeconds": 20}}, "must be at least"),
    ({"leaderElection": {"enabled": False}}, "needs replicas: 1"),
    ({"proxyProtocol": {"http": True}}, "proxyProtocol needs trustedProxies"),
    ({"proxyProtocol": {"https": True}}, "proxyProtocol needs trustedProxies"),
    ({"service": {"externalTrafficPolicy": "Local"}}, "NodePort or LoadBalancer only"),
    ({"service": {"nodePort": 30080}}, "NodePort or LoadBalancer only"),
    ({"manager": {"existingSecret": "x", "createSecret": True}}, "choose one"),
    ({"podDisruptionBudget": {"minAvailable": 1}}, "not both"),
]


@pytest.mark.parametrize("values,message", BAD_VALUES, ids=[str(v) for v, _ in BAD_VALUES])
def test_bad_values_are_refused(values, message):
    with pytest.raises(helmrender.RenderError) as e:
        helmrender.render(values)
    assert message in str(e.value), str(e.value)


def test_kubernetes_older_than_1_30_is_refused():
    """lifecycle.preStop.sleep (the image has no shell) is on by default from 1.30."""
    with pytest.raises(helmrender.RenderError) as e:
        helmrender.render(kube_version="1.29.4")
    assert "kubeVersion" in str(e.value) or "1.30" in str(e.value), str(e.value)
    assert helmrender.render(kube_version="1.30.0").one("Deployment")


def test_schema_error_names_the_value():
    with pytest.raises(helmrender.RenderError) as e:
        helmrender.render({"replicas": "two"})
    assert "values don't meet the specifications of the schema" in str(e.value)
    assert "at '/replicas': got string, want integer" in str(e.value)


def test_values_yaml_documents_every_schema_key():
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(schema["properties"]) - {"global"} == set(values), "values.yaml and values.schema.json disagree"


# --- NOTES ---------------------------------------------------------------------------------


def test_notes():
    notes = rendered("default").notes
    for text in [
        "kubectl -n routeid rollout status deploy/routeid",
        "kubectl apply -f examples/tomcat/",
        "kubectl get bp -A",
        "port-forward svc/routeid 8080:80",
        "/balancer-manager",
        "/metrics",
        "create secret generic routeid-manager",
        "kubectl apply --server-side -f charts/routeid/crds/",
    ]:
        assert text in notes, text
    assert "set it to" not in notes
    full = rendered("full").notes
    assert "get secret edge-routeid-manager" in full and "ServiceMonitor" in full
    assert "spec.ingressClassName: routeid; set it to public" in full
    for path in re.findall(r"kubectl apply (?:--server-side )?-f (\S+)", notes + rendered("sidecar").notes):
        assert (ROOT / path).exists(), path


def test_ingress_class_is_created_and_default_only_when_asked():
    rel = rendered("default")
    ic = rel.one("IngressClass")
    assert ic["metadata"]["name"] == "routeid"
    assert ic["spec"] == {"controller": "routeid.io/ingress-controller"}
    assert "ingressclass.kubernetes.io/is-default-class" not in (ic["metadata"].get("annotations") or {})
    assert "watch-ingress-without-class" not in args_of(container(rel))
    rel = helmrender.render({"ingressClass": {"name": "edge", "default": True}})
    ic = rel.one("IngressClass")
    assert ic["metadata"]["name"] == "edge"
    assert ic["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"] == "true"
    a = args_of(container(rel))
    assert a["watch-ingress-without-class"] is True and a["ingress-class"] == "edge"
    assert not helmrender.render({"ingressClass": {"create": False}}).of_kind("IngressClass")


RULES = yaml.safe_load((CHART / "rules" / "routeid.rules.yaml").read_text())
DASHBOARD = (CHART / "dashboards" / "routeid.json").read_text()


def test_prometheus_rule_carries_the_checked_rules():
    rel = helmrender.render({"prometheusRule": {"enabled": True, "additionalRuleLabels": {"team": "platform"}}})
    pr = rel.one("PrometheusRule")
    assert pr["apiVersion"] == "monitoring.coreos.com/v1"
    assert pr["metadata"]["namespace"] == "routeid"
    got = [r for g in pr["spec"]["groups"] for r in g["rules"]]
    want = [r for g in RULES["groups"] for r in g["rules"]]
    assert [r["alert"] for r in got] == [r["alert"] for r in want]
    for g, w in zip(got, want):
        # The same expression, duration and annotations (Prometheus templates kept as written).
        assert {k: v for k, v in g.items() if k != "labels"} == {k: v for k, v in w.items() if k != "labels"}
        assert g["labels"] == {**w["labels"], "team": "platform"}
        assert "{{ $labels.namespace }}/{{ $labels.pool }}" in g["annotations"]["summary"] + g["annotations"]["description"] \
            or "$labels.secret" in g["annotations"]["summary"] or "$labels.instance" in g["annotations"]["description"]


def test_prometheus_rule_labels_and_namespace():
    rel = rendered("full")
    pr = rel.one("PrometheusRule")
    assert pr["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pr["metadata"]["labels"]["app.kubernetes.io/name"] == "routeid"
    rel = helmrender.render({"prometheusRule": {"enabled": True, "namespace": "monitoring"}})
    pr = rel.one("PrometheusRule")
    assert pr["metadata"]["namespace"] == "monitoring"
    assert all("team" not in r["labels"] for g in pr["spec"]["groups"] for r in g["rules"])


def test_grafana_dashboard_configmap():
    cm = rendered("full").one("ConfigMap")
    assert cm["metadata"]["name"] == "edge-routeid-dashboard"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Ingress"}
    assert json.loads(cm["data"]["routeid.json"]) == json.loads(DASHBOARD)
    rel = helmrender.render({"grafanaDashboard": {"enabled": True, "label": "dashboards", "labelValue": "routeid", "namespace": "grafana"}})
    cm = rel.one("ConfigMap")
    assert cm["metadata"]["labels"]["dashboards"] == "routeid"
    assert cm["metadata"]["namespace"] == "grafana"
    assert not rel.of_kind("PrometheusRule")
