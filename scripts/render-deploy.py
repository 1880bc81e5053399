#!/usr/bin/env python3
"""Re-generate deploy/ (plain manifests for `kubectl apply -f deploy/`) and
examples/sidecar/10-rbac.yaml from charts/routeid, with the real Helm library (helm-sdkpy).

    pip install --ignore-requires-python helm-sdkpy pyyaml
    python3 scripts/render-deploy.py           # write the files
    python3 scripts/render-deploy.py --check   # exit 1 and list the files that differ

tests/chart/test_generated.py runs the --check comparison.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helmrender  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    stale = []
    for rel, content in helmrender.generated_files().items():
        path = helmrender.ROOT / rel
        current = path.read_text() if path.exists() else None
        if current == content:
            continue
        stale.append(rel)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            print(f"wrote {rel}")
    if args.check and stale:
        print("out of date (run python3 scripts/render-deploy.py):", *stale, sep="\n  ")
        return 1
    if not stale:
        print("up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
