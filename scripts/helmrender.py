"""Render charts/routeid with the real Helm library, without a cluster.

helm-sdkpy (PyPI) wraps Helm 4's Go library. Its `Lint` checks a chart with its default values
only, and the one action that renders a chart with given values is `Install`, which needs an API
server: `render()` runs it against `fakekube.FakeKube` (an in-process fake API server) with the
release stored in memory (HELM_DRIVER=memory). What comes back is what `helm install` would send
to a cluster: the rendered manifest, the CRDs from crds/, the NOTES, or Helm's own error
(schema validation, `fail` in a template, a YAML error).

Used by tests/chart (the chart tests) and scripts/render-deploy.py (deploy/ and the generated
example files).

Needs: pip install --ignore-requires-python helm-sdkpy pyyaml
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from fakekube import FakeKube

# The Go library reads the environment the process started with, not os.environ: HELM_DRIVER
# must be in it: without it, render() and lint() run in a child process started with it.
HELM_ENV = {"HELM_DRIVER": "memory"}

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "routeid"


class RenderError(Exception):
    """Helm refused the chart or the values; the message is Helm's."""


@dataclass
class Release:
    manifest: str  # the rendered templates, as Helm stores them
    objects: list[dict]  # the manifest's documents, in order
    crds: list[dict]  # what Helm created from crds/
    notes: str
    created: list[dict] = field(default_factory=list)  # everything sent to the API server

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o.get("kind") == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]


def _in_process() -> bool:
    return all(os.environ.get(k) == v for k, v in HELM_ENV.items())


def _in_worker(call: str, kwargs: dict):
    """Runs `call` in a child process started with HELM_ENV (this one started without it)."""
    env = dict(os.environ, **HELM_ENV)
    proc = subprocess.run(
        [sys.executable, __file__],
        input=json.dumps({"call": call, "kwargs": kwargs}),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"helmrender worker failed ({proc.returncode}):\n{proc.stderr}")
    out = json.loads(proc.stdout)
    if "error" in out:
        raise RenderError(out["error"])
    return out["result"]


def _helm():
    import helm_sdkpy

    return helm_sdkpy


def render(
    values: dict | None = None,
    *,
    release: str = "routeid",
    namespace: str = "routeid",
    chart: Path = CHART,
    kube_version: str = "1.33.0",
    existing: list[dict] | None = None,
) -> Release:
    """`helm install RELEASE CHART -n NAMESPACE --create-namespace -f values`, against a fake API
    server. Raises RenderError with Helm's message when Helm refuses. `existing`: objects the
    cluster already has (Helm's `lookup` sees them; Helm takes ownership of those it renders)."""
    if not _in_process():
        kwargs = dict(values=values, release=release, namespace=namespace, chart=str(chart))
        kwargs.update(kube_version=kube_version, existing=existing)
        return Release(**_in_worker("render", kwargs))
    helm = _helm()
    with FakeKube(kube_version) as kube:
        for obj in existing or []:
            kube.preload(obj)
        cfg = helm.Configuration(namespace=namespace, kubeconfig=kube.kubeconfig)
        try:
            result = asyncio.run(
                helm.Install(cfg).run(
                    release,
                    str(chart),
                    values=values or None,
                    create_namespace=True,
                    wait=False,
                    timeout=60,
                    take_ownership=bool(existing),
                )
            )
        except helm.HelmError as e:
            raise RenderError(str(e)) from None
        if kube.protobuf_requests:
            raise RuntimeError(
                "Helm sent protobuf (its Secret release storage): HELM_DRIVER=memory was not in effect "
                "when the Helm library was loaded; import helmrender before helm_sdkpy"
            )
        created = kube.created
    manifest = result.get("manifest") or ""
    objects = [d for d in yaml.safe_load_all(manifest) if d]
    crds = [o for o in created if o.get("kind") == "CustomResourceDefinition"]
    notes = (result.get("info") or {}).get("notes") or ""
    return Release(manifest=manifest, objects=objects, crds=crds, notes=notes, created=created)


def lint(values: dict | None = None, chart: Path = CHART) -> list[dict]:
    """`helm lint` (Helm's Lint action, offline) with these values, which it cannot take directly:
    a copy of the chart gets them as its values.yaml. Returns the messages of severity warning or
    error as {severity, path}; Helm's wrapper does not pass their text on."""
    import shutil

    if not _in_process():
        return _in_worker("lint", dict(values=values, chart=str(chart)))
    helm = _helm()
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / chart.name
        shutil.copytree(chart, copy)
        if values is not None:
            base = yaml.safe_load((chart / "values.yaml").read_text()) or {}
            (copy / "values.yaml").write_text(yaml.safe_dump(_deep_merge(base, values)))
        result = asyncio.run(helm.Lint(helm.Configuration(namespace="default")).run(str(copy)))
    names = {0: "unknown", 1: "info", 2: "warning", 3: "error", 4: "error"}
    bad = [
        {"severity": names.get(m.get("Severity"), m.get("Severity")), "path": m.get("Path")}
        for m in result.get("Messages") or []
        if (m.get("Severity") or 0) >= 2
    ]
    for e in result.get("Errors") or []:
        bad.append({"severity": "error", "path": str(e)})
    return bad


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# --- generated files (scripts/render-deploy.py) -----------------------------------------------

HEADER = (
    "# Generated by scripts/render-deploy.py from charts/routeid ({what}).\n"
    "# Do not edit: change the chart, run `python3 scripts/render-deploy.py`; tests/chart fails when\n"
    "# this file and the chart disagree.\n"
)


def _dump(objs: list[dict]) -> str:
    return "---\n".join(yaml.safe_dump(o, sort_keys=False, width=100) for o in objs)


def generated_files() -> dict[str, str]:
    """Path (relative to the repository) -> content, for every generated file."""
    files: dict[str, str] = {}
    # deploy/: `helm install routeid charts/routeid -n routeid` with the default values.
    ns = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "routeid",
            "labels": {
                # routeid's pods meet the restricted Pod Security Standard.
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        },
    }
    files["deploy/00-namespace.yaml"] = HEADER.format(what="the namespace of the release") + _dump([ns])
    crd = (CHART / "crds" / "balancerpool.yaml").read_text()
    files["deploy/01-crd-balancerpool.yaml"] = (
        HEADER.format(what="crds/balancerpool.yaml, generated by `routeid crd`") + crd
    )
    rel = render()
    manifest = rel.manifest.replace("app.kubernetes.io/managed-by: Helm", "app.kubernetes.io/managed-by: kubectl")
    manifest = manifest.lstrip("-\n")
    files["deploy/02-routeid.yaml"] = (
        HEADER.format(what="default values; release routeid, namespace routeid")
        + "# Apply all of deploy/ (kubectl apply -f deploy/); the namespace and the CRD come first.\n---\n"
        + manifest.rstrip("\n")
        + "\n"
    )
    # examples/sidecar/: the sidecar's RBAC in the example namespace.
    side = render({"mode": "sidecar"}, release="routeid-sidecar", namespace="demo")
    rbac = [o for o in side.objects if o["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    for o in rbac:
        o["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "kubectl"
    files["examples/sidecar/10-rbac.yaml"] = (
        HEADER.format(what="mode: sidecar; release routeid-sidecar, namespace demo")
        + "# What a routeid sidecar needs in its own namespace: no ClusterRole.\n"
        + _dump(rbac)
    )
    return files


def _worker() -> None:
    req = json.loads(sys.stdin.read())
    kwargs = req["kwargs"]
    kwargs["chart"] = Path(kwargs["chart"])
    try:
        if req["call"] == "render":
            out = {"result": asdict(render(**kwargs))}
        else:
            out = {"result": lint(**kwargs)}
    except RenderError as e:
        out = {"error": str(e)}
    sys.stdout.write(json.dumps(out))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    _worker()
