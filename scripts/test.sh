#!/usr/bin/env bash
# Installs what the checks need (scripts/setup.sh: ./venv and helm; plus Debian packages when run
# as root) and runs every check: ruff, pyright, shellcheck and the pytest suite (Pulumi mock runs,
# the upstream charts rendered by helm, the offline plan).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian's containerd loads the rendered 1.x config for real; zstd packs the test Kata release;
# jq runs inside the verification scripts; graphviz draws the plan's graph; a real etcd cluster
# (etcd-server, etcd-client) is what the control plane removal step is tested against; nftables
# and iproute2 (nft, ip netns) run the metadata block between the test's network namespaces;
# OpenSSH's server and client serve and check the pinned host keys and the users' ssh config.
declare -A debian_packages=([containerd]=containerd [zstd]=zstd [jq]=jq [dot]=graphviz
  [etcd]=etcd-server [etcdctl]=etcd-client [nft]=nftables [ip]=iproute2
  [sshd]=openssh-server [ssh]=openssh-client)
missing=()
for command_name in "${!debian_packages[@]}"; do
  command -v "$command_name" >/dev/null || missing+=("${debian_packages[$command_name]}")
done
if ((${#missing[@]} > 0)); then
  if ((EUID == 0)); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "note: ${missing[*]} missing and not root; tests that need them are skipped" >&2
  fi
fi

# containerd 2.x is not in bookworm: Debian sid's package is downloaded and unpacked (not
# installed) so that a real containerd 2.x loads the rendered 2.x config too.
containerd2=.cache/containerd2/usr/bin/containerd
if [[ ! -x $containerd2 ]] && command -v apt-get >/dev/null && command -v dpkg >/dev/null; then
  apt_dir=$PWD/.cache/apt-sid
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main" \
    >"$apt_dir/sources.list"
  apt_options=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir" -o "Dir::Cache::archives=$apt_dir/archives"
    -o APT::Sandbox::User=root)
  if apt-get "${apt_options[@]}" update -qq >/dev/null 2>&1 &&
    (cd "$apt_dir" && apt-get "${apt_options[@]}" download -qq containerd >/dev/null 2>&1); then
    dpkg -x "$apt_dir"/containerd_*.deb .cache/containerd2
  else
    echo "note: could not fetch Debian sid's containerd 2.x; its test is skipped" >&2
  fi
fi
# etcd 3.5 (Debian sid's etcd-server: etcd and etcdutl; bookworm has 3.4 only), unpacked the same
# way: the restore with a real etcdutl that moves the revision on, served by a real etcd 3.5.
etcd35=.cache/etcd35/usr/bin/etcdutl
if [[ ! -x $etcd35 ]] && command -v apt-get >/dev/null && command -v dpkg >/dev/null; then
  apt_dir=$PWD/.cache/apt-sid
  apt_options=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir" -o "Dir::Cache::archives=$apt_dir/archives"
    -o APT::Sandbox::User=root)
  if [[ -f $apt_dir/sources.list ]] && (cd "$apt_dir" && apt-get "${apt_options[@]}" download -qq etcd-server >/dev/null 2>&1); then
    dpkg -x "$apt_dir"/etcd-server_*.deb .cache/etcd35
  else
    echo "note: could not fetch Debian sid's etcd 3.5; its restore test is skipped" >&2
  fi
fi
# cloud-init's JSON schema checks the user-data that installs the host keys: Debian's package is
# downloaded and unpacked (not installed; only its schema file is read).
cloud_init_schema_path=usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json
cloud_init_schema=.cache/cloud-init/$cloud_init_schema_path
if [[ ! -f $cloud_init_schema ]] && command -v apt-get >/dev/null && command -v dpkg >/dev/null; then
  deb_dir=$(mktemp -d)
  if (cd "$deb_dir" && apt-get download -qq cloud-init >/dev/null 2>&1); then
    mkdir -p .cache/cloud-init
    dpkg-deb --fsys-tarfile "$deb_dir"/cloud-init_*.deb | tar -x -C .cache/cloud-init "./$cloud_init_schema_path"
  else
    echo "note: could not fetch Debian's cloud-init; the user-data schema test is skipped" >&2
  fi
  rm -rf "$deb_dir"
fi

if [[ -x $etcd35 ]]; then
  export KATA_MESH_ETCD35=$PWD/.cache/etcd35/usr/bin
fi
if [[ -x $containerd2 ]]; then
  export KATA_MESH_CONTAINERD2=$PWD/$containerd2
fi

bash scripts/setup.sh

echo "== ruff"
venv/bin/ruff check .
venv/bin/ruff format --check .

echo "== pyright"
venv/bin/pyright

echo "== shellcheck"
mapfile -t shell_scripts < <(find . \( -path ./venv -o -path ./.cache \) -prune -o -type f \( -name '*.sh' -o -path ./.ci/run \) -print)
venv/bin/shellcheck --severity=style "${shell_scripts[@]}"

echo "== pytest"
venv/bin/python -m pytest "$@"

# Real etcd, nftables in network namespaces, real servers, a 50-node mock run (about a minute).
echo "== pytest -m system"
venv/bin/python -m pytest -m system

# The node steps in a real Debian VM under QEMU (minutes): its image is built once, as root, into
# .cache/test-vm (tests/vm/build.sh; rebuilt only when that script changes).
echo "== pytest -m vm"
if ((EUID == 0)); then
  bash tests/vm/build.sh
fi
venv/bin/python -m pytest -m vm -n 0
