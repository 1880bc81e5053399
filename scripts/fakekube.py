"""A fake Kubernetes API server, just enough for `helm install` to run against it.

No cluster exists where the chart tests run, and Helm's install action (the only action of the
Helm library in helm-sdkpy that renders a chart with user values) talks to an API server. This
server answers discovery for the kinds the chart uses, stores what it is sent (POST/PUT/PATCH,
GET, LIST; a WATCH returns an empty stream after a moment), and marks CRDs Established. The
objects Helm creates are recorded in order: they are exactly what `helm install` would send to a
real cluster, which is what the tests assert on.

It does no admission, no defaulting, no validation and no garbage collection.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

# group/version -> [(plural, kind, namespaced)]
RESOURCES: dict[str, list[tuple[str, str, bool]]] = {
    "v1": [
        ("namespaces", "Namespace", False),
        ("serviceaccounts", "ServiceAccount", True),
        ("services", "Service", True),
        ("secrets", "Secret", True),
        ("configmaps", "ConfigMap", True),
        ("pods", "Pod", True),
        ("events", "Event", True),
    ],
    "apps/v1": [
        ("deployments", "Deployment", True),
        ("statefulsets", "StatefulSet", True),
        ("daemonsets", "DaemonSet", True),
    ],
    "batch/v1": [("jobs", "Job", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "rbac.authorization.k8s.io/v1": [
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
    ],
    "apiextensions.k8s.io/v1": [("customresourcedefinitions", "CustomResourceDefinition", False)],
    "coordination.k8s.io/v1": [("leases", "Lease", True)],
    "discovery.k8s.io/v1": [("endpointslices", "EndpointSlice", True)],
    "events.k8s.io/v1": [("events", "Event", True)],
    "networking.k8s.io/v1": [
        ("ingresses", "Ingress", True),
        ("ingressclasses", "IngressClass", False),
        ("networkpolicies", "NetworkPolicy", True),
    ],
    "monitoring.coreos.com/v1": [
        ("servicemonitors", "ServiceMonitor", True),
        ("podmonitors", "PodMonitor", True),
        ("prometheusrules", "PrometheusRule", True),
    ],
    "routeid.io/v1alpha1": [("balancerpools", "BalancerPool", True)],
}


def _resource_list(gv: str) -> dict:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": [
            {"name": plural, "singularName": kind.lower(), "namespaced": ns, "kind": kind, "verbs": ALL_VERBS}
            for plural, kind, ns in RESOURCES[gv]
        ],
    }


def _group_list() -> dict:
    groups = []
    for gv in RESOURCES:
        if "/" not in gv:
            continue
        group, version = gv.split("/")
        entry = {"groupVersion": gv, "version": version}
        groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _gv_path(gv: str) -> str:
    return f"apis/{gv}" if "/" in gv else f"api/{gv}"


def _openapi_v3(gv: str) -> dict:
    """An OpenAPI v3 document saying that every kind's PATCH takes `fieldValidation`: kubectl's
    validator then leaves validation to the server (this one does none) instead of asking for
    the OpenAPI v2 schemas."""
    group, _, version = gv.rpartition("/")
    paths = {}
    for plural, kind, namespaced in RESOURCES[gv]:
        prefix = f"/{_gv_path(gv)}/" + ("namespaces/{namespace}/" if namespaced else "")
        paths[prefix + plural + "/{name}"] = {
            "patch": {
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind},
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}},
            }
        }
    return {"openapi": "3.0.0", "info": {"title": "fake", "version": "v1"}, "paths": paths}


def _merge(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


class FakeKube:
    """Start with `with FakeKube() as kube:`; `kube.kubeconfig` is a kubeconfig YAML string."""

    def __init__(self, version: str = "1.33.0") -> None:
        self.version = version
        self.lock = threading.Lock()
        self.store: dict[tuple, dict] = {}  # (gv, plural, namespace, name) -> object
        self.created: list[dict] = []  # every object created, in order
        self.requests: list[tuple[str, str]] = []
        self.protobuf_requests = 0  # Helm's Secret storage driver speaks protobuf: not supported
        self.rv = itertools.count(1)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # One write per response, no Nagle: otherwise each request waits for a delayed ACK.
            disable_nagle_algorithm = True
            wbufsize = 1 << 16

            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                return json.loads(raw) if raw else None

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                fake.requests.append((method, self.path))
                if "protobuf" in (self.headers.get("Content-Type") or ""):
                    fake.protobuf_requests += 1
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    self._send(415, _status(415, "UnsupportedMediaType", "protobuf: set HELM_DRIVER=memory"))
                    return
                try:
                    code, body = fake.dispatch(method, url.path, parse_qs(url.query), self._body())
                except Exception as e:  # a bug here must not hang helm
                    code, body = 500, _status(500, "InternalError", repr(e))
                if code == 0:  # a watch: an empty stream that ends soon
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    time.sleep(0.2)
                    self.wfile.write(b"0\r\n\r\n")
                    return
                self._send(code, body)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PUT(self):
                self._handle("PUT")

            def do_PATCH(self):
                self._handle("PATCH")

            def do_DELETE(self):
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.kubeconfig = (
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: fake, cluster: {{server: '{self.url}'}}}}]\n"
            "users: [{name: fake, user: {token: fake}}]\n"
            "contexts: [{name: fake, context: {cluster: fake, user: fake}}]\n"
            "current-context: fake\n"
        )
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def preload(self, obj: dict) -> None:
        """Puts an object in the store as if it existed before (not recorded in `created`)."""
        gv, kind = obj["apiVersion"], obj["kind"]
        plural = next(p for p, k, _ in RESOURCES[gv] if k == kind)
        meta = obj["metadata"]
        self.store[(gv, plural, meta.get("namespace", ""), meta["name"])] = copy.deepcopy(obj)

    def __enter__(self) -> "FakeKube":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- request routing -------------------------------------------------------------------

    def dispatch(self, method: str, path: str, query: dict, body):
        parts = [p for p in path.split("/") if p]
        if path == "/version":
            major, minor, _ = self.version.split(".")
            return 200, {"major": major, "minor": minor, "gitVersion": f"v{self.version}", "platform": "linux/amd64"}
        if parts == ["api"]:
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if parts == ["apis"]:
            return 200, _group_list()
        if parts == ["openapi", "v3"]:
            return 200, {"paths": {_gv_path(gv): {"serverRelativeURL": f"/openapi/v3/{_gv_path(gv)}?hash=0"} for gv in RESOURCES}}
        if parts[:2] == ["openapi", "v3"]:
            gv = "/".join(parts[3:]) if parts[2:3] == ["apis"] else "/".join(parts[3:])
            if gv in RESOURCES:
                return 200, _openapi_v3(gv)
            return 404, _status(404, "NotFound", path)
        if parts and parts[0] == "openapi":
            return 404, _status(404, "NotFound", "no openapi v2")
        if len(parts) >= 2 and parts[0] == "api":
            gv, rest = parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return 404, _status(404, "NotFound", path)
        if gv not in RESOURCES:
            return 404, _status(404, "NotFound", f"no API group {gv}")
        if not rest:
            return 200, _resource_list(gv)
        ns = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        plural, name = rest[0], (rest[1] if len(rest) > 1 else None)
        sub = rest[2] if len(rest) > 2 else None
        kinds = {p: k for p, k, _ in RESOURCES[gv]}
        if plural not in kinds:
            return 404, _status(404, "NotFound", f"no resource {gv} {plural}")
        with self.lock:
            return self._object(method, gv, plural, kinds[plural], ns, name, sub, query, body)

    def _object(self, method, gv, plural, kind, ns, name, sub, query, body):
        key = (gv, plural, ns or "", name)
        if name is None:
            if method == "GET":
                if query.get("watch", ["false"])[0] in ("true", "1"):
                    return 0, None
                items = [
                    o for (g, p, n, _), o in self.store.items() if g == gv and p == plural and (ns is None or n == ns)
                ]
                sel = query.get("labelSelector", [""])[0]
                items = [o for o in items if _selects(sel, o)]
                return 200, {
                    "kind": f"{kind}List",
                    "apiVersion": gv,
                    "metadata": {"resourceVersion": str(next(self.rv))},
                    "items": items,
                }
            if method == "POST":
                obj = copy.deepcopy(body)
                meta = obj.setdefault("metadata", {})
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                key = (gv, plural, ns or "", meta.get("name"))
                if key in self.store:
                    return 409, _status(409, "AlreadyExists", f"{plural} {meta.get('name')} already exists")
                if ns:
                    meta["namespace"] = ns
                meta.update(
                    uid=str(uuid.uuid4()),
                    resourceVersion=str(next(self.rv)),
                    creationTimestamp="2025-01-01T00:00:00Z",
                    generation=1,
                )
                if kind == "CustomResourceDefinition":
                    obj["status"] = {
                        "conditions": [
                            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
                            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"},
                        ],
                        "acceptedNames": obj.get("spec", {}).get("names", {}),
                    }
                self.store[key] = obj
                self.created.append(copy.deepcopy(body))
                return 201, obj
            return 405, _status(405, "MethodNotAllowed", method)
        obj = self.store.get(key)
        if method == "GET":
            return (200, obj) if obj else (404, _status(404, "NotFound", f'{plural} "{name}" not found'))
        if method == "DELETE":
            if not obj:
                return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
            del self.store[key]
            return 200, _status(200, "Success", "deleted")
        if method == "PUT":
            new = copy.deepcopy(body)
            new.setdefault("metadata", {})["resourceVersion"] = str(next(self.rv))
            self.store[key] = new
            return (200 if obj else 201), new
        if method == "PATCH":
            if not obj:
                return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
            new = _merge(obj, body)
            new["metadata"]["resourceVersion"] = str(next(self.rv))
            self.store[key] = new
            return 200, new
        return 405, _status(405, "MethodNotAllowed", method)


def _selects(selector: str, obj: dict) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k) != v:
                return False
        elif labels.get(term) is None:
            return False
    return True


def _status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
