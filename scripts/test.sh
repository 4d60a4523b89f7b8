#!/usr/bin/env bash
# Installs what the checks need (into ./venv, plus Debian packages when run as root) and runs
# every check: ruff, pyright, shellcheck and the pytest suite (Pulumi mock runs included).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian's containerd loads the rendered 1.x config for real; zstd packs the test Kata release;
# jq runs inside the verification scripts.
debian_packages=(containerd zstd jq)
missing=()
for pkg in "${debian_packages[@]}"; do
  command -v "$pkg" >/dev/null || missing+=("$pkg")
done
if ((${#missing[@]} > 0)); then
  if ((EUID == 0)); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "note: ${missing[*]} missing and not root; tests that need them are skipped" >&2
  fi
fi

python_bin="${PYTHON:-python3}"
if [[ ! -x venv/bin/python ]]; then
  "$python_bin" -m venv venv
fi
venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt

echo "== ruff"
venv/bin/ruff check .
venv/bin/ruff format --check .

echo "== pyright"
venv/bin/pyright

echo "== shellcheck"
mapfile -t shell_scripts < <(find . -path ./venv -prune -o -type f \( -name '*.sh' -o -path ./.ci/run \) -print)
venv/bin/shellcheck --severity=style "${shell_scripts[@]}"

echo "== pytest"
venv/bin/python -m pytest "$@"
