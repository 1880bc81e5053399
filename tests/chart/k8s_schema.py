"""Checks Kubernetes objects against the API's own types, offline: the official Python client
(PyPI `kubernetes`) is generated from the Kubernetes OpenAPI spec, and each model class lists its
fields (`attribute_map`: JSON name) and their types (`openapi_types`). Every field of an object
must exist in its type, and every value must have the type's shape: a misspelt field
(`readinessprobe`), a number where the API wants a string (an env `value: 1`), a map where it
wants a list, or a field of a newer API than the client knows are reported with their path.

Custom resources (BalancerPool, ServiceMonitor, PodMonitor) are not covered here: BalancerPools
are checked against the generated CRD schema instead.
"""

from __future__ import annotations

import re

from kubernetes import client

# apiVersion group -> the client's class prefix after the version (V1 + "" + Deployment ...).
# Not in the Kubernetes client: routeid's CRD (checked against its schema below), the Prometheus
# operator's, and the Gateway API's (examples/gateway.yaml is read by the Rust translation tests).
CUSTOM_GROUPS = {"routeid.io", "monitoring.coreos.com", "gateway.networking.k8s.io", "gateway.networking.x-k8s.io"}


def model_for(api_version: str, kind: str):
    group, _, version = api_version.rpartition("/")
    if group in CUSTOM_GROUPS:
        return None
    name = version[0].upper() + version[1:] + kind  # v1 + Deployment -> V1Deployment
    cls = getattr(client, name, None)
    if cls is None:
        raise AssertionError(f"{api_version} {kind}: not a Kubernetes API type the client knows")
    return cls


def problems(obj: dict) -> list[str]:
    cls = model_for(obj.get("apiVersion", ""), obj.get("kind", ""))
    if cls is None:
        return []
    out: list[str] = []
    _check(obj, cls.__name__, obj["kind"], out)
    return out


def check_as(value, type_name: str, path: str) -> list[str]:
    """Checks `value` as the client type `type_name` (e.g. "V1Container")."""
    out: list[str] = []
    _check(value, type_name, path, out)
    return out


_LIST = re.compile(r"^(?:list|List)\[(.*)\]$")
_DICT = re.compile(r"^(?:dict|Dict)\((?:str), (.*)\)$|^(?:dict|Dict)\[str, (.*)\]$")
# Quantities are typed str by the client but the API accepts YAML numbers for them.
_QUANTITY_MAPS = {"limits", "requests", "capacity", "allocatable", "hard"}


def _check(value, t: str, path: str, out: list[str]) -> None:
    if value is None:
        return
    m = _LIST.match(t)
    if m:
        if not isinstance(value, list):
            out.append(f"{path}: a list expected, got {type(value).__name__}")
            return
        for i, v in enumerate(value):
            _check(v, m.group(1), f"{path}[{i}]", out)
        return
    m = _DICT.match(t)
    if m:
        inner = m.group(1) or m.group(2)
        if not isinstance(value, dict):
            out.append(f"{path}: a map expected, got {type(value).__name__}")
            return
        quantity = path.rsplit(".", 1)[-1] in _QUANTITY_MAPS
        for k, v in value.items():
            if quantity and isinstance(v, (int, float)) and not isinstance(v, bool):
                continue
            _check(v, inner, f"{path}.{k}", out)
        return
    if t in ("str", "bytes", "bytearray"):  # bytes: base64 text in YAML
        if not isinstance(value, str):
            out.append(f"{path}: a string expected, got {type(value).__name__} {value!r}")
        return
    if t == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            out.append(f"{path}: an integer expected, got {type(value).__name__} {value!r}")
        return
    if t == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            out.append(f"{path}: a number expected, got {value!r}")
        return
    if t == "bool":
        if not isinstance(value, bool):
            out.append(f"{path}: true/false expected, got {value!r}")
        return
    if t in ("object", "datetime", "date"):
        return  # int-or-string, free-form (e.g. a CRD schema), timestamps
    cls = getattr(client, t, None)
    if cls is None:
        out.append(f"{path}: unknown client type {t}")
        return
    if not isinstance(value, dict):
        out.append(f"{path}: an object ({t}) expected, got {type(value).__name__}")
        return
    by_json = {j: py for py, j in cls.attribute_map.items()}
    for k, v in value.items():
        if k not in by_json:
            out.append(f"{path}.{k}: no such field in {t}")
            continue
        _check(v, cls.openapi_types[by_json[k]], f"{path}.{k}", out)
