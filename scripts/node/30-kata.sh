#!/usr/bin/env bash
# Step 3: Kata Containers from its pinned static release into the prefix (/opt/kata), checked
# against its sha256 before anything is extracted; the seed's five links; the program's drop-in
# for nested virtualization; then `kata-runtime check` must pass.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_kata_url=""
arg_kata_sha256=""
arg_prefix=""
arg_bin_dir=""
arg_links=""
arg_dropin_name=""
arg_dropin_b64=""
arg_cache_dir=""
km_parse_args "$@"
km_require_args kata_url kata_sha256 prefix bin_dir links dropin_name dropin_b64 cache_dir
read -r -a links <<<"$arg_links"
prefix=${arg_prefix%/}
release_marker=$prefix/.kata-mesh-release

if [[ -f $release_marker && $(<"$release_marker") == "$arg_kata_sha256" ]]; then
  km_log "Kata release $arg_kata_sha256 already in $prefix"
else
  command -v zstd >/dev/null || km_die "zstd is needed to unpack the Kata release (prerequisites step)"
  tarball=$arg_cache_dir/${arg_kata_url##*/}
  # Verified before anything is unpacked: a bad download dies here and leaves no trace.
  km_fetch_verified "$arg_kata_url" "$arg_kata_sha256" "$tarball"
  mkdir -p "$(dirname "$prefix")"
  staging=$(mktemp -d "$(dirname "$prefix")/.kata-staging.XXXXXX")
  trap 'rm -rf "$staging"' EXIT
  tar --zstd -xf "$tarball" -C "$staging" || km_die "cannot unpack $tarball"
  [[ -d $staging/opt/kata/bin ]] || km_die "unexpected layout in $tarball: no opt/kata/bin"
  printf '%s\n' "$arg_kata_sha256" >"$staging/opt/kata/.kata-mesh-release"
  # Swap the whole tree so an older release leaves nothing behind.
  if [[ -e $prefix ]]; then
    mv "$prefix" "$staging/previous"
  fi
  mv "$staging/opt/kata" "$prefix"
  km_log "installed Kata into $prefix"
fi

mkdir -p "$arg_bin_dir"
for name in "${links[@]}"; do
  target=$prefix/bin/$name
  [[ -e $target ]] || km_die "$target is missing from the Kata release"
  if [[ $(readlink "$arg_bin_dir/$name" || true) != "$target" ]]; then
    ln -sfn "$target" "$arg_bin_dir/$name"
    km_log "linked $arg_bin_dir/$name"
  fi
done

# Kata merges config.d/*.toml over configuration.toml key by key (Kata's drop-in support), so the
# release's own configuration stays untouched.
km_put_file "$prefix/share/defaults/kata-containers/config.d/$arg_dropin_name" 0644 \
  "$(base64 -d <<<"$arg_dropin_b64")"

km_kata_check "$prefix"
