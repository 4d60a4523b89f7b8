#!/usr/bin/env bash
# kata-mesh-renew-certs: renews kubeadm's certificates on this control plane well before they
# expire, run by kata-mesh-renew-certs.timer (installed as /usr/local/sbin/kata-mesh-renew-certs;
# self-contained: it reads no lib.sh). Safe to run at any time: it does nothing unless a
# certificate expires within --renew-within-days. In order:
#   0. a manifest an interrupted earlier run left in --work-dir goes back first (and its pod is
#      waited for), so a control plane never stays without one of its static pods;
#   1. `kubeadm certs check-expiration -o json` (kind CertificateExpirationInfo, apiVersion
#      output.kubeadm.k8s.io/v1alpha3, kubeadm 1.30+): each of .certificates[] has name,
#      expirationDate (RFC 3339), residualTime (whole seconds), externallyManaged and missing.
#      Only certificates kubeadm renews count: present and not externally managed. The CAs
#      (.certificateAuthorities[]) last ten years and `renew all` does not renew them: one that
#      expires within the window is only warned about. Nothing within the window: the soonest
#      expiry is logged and the run ends there;
#   2. `kubeadm certs renew all`;
#   3. each of --components in turn: its manifest moved from --manifests-dir into --work-dir, a
#      bounded wait until crictl shows no running container of it, the manifest moved back, a
#      bounded wait until one runs again (and for kube-apiserver until --readyz-url answers ok),
#      before the next. Never two manifests out at once. A wait that runs out puts the manifest
#      back and fails naming the component (the systemd unit shows failed), as does a stop of the
#      service (SIGTERM) half way;
#   4. a last check: the new soonest expiry, printed as the final line.
set -euo pipefail
umask 077
export LC_ALL=C

log() { printf '[kata-mesh-renew-certs] %s\n' "$*" >&2; }
die() {
  printf '[kata-mesh-renew-certs] ERROR: %s\n' "$*" >&2
  exit 1
}

arg_renew_within_days=90
arg_manifests_dir=/etc/kubernetes/manifests
arg_work_dir=/var/lib/kata-mesh/renew-certs
arg_components="etcd kube-apiserver kube-controller-manager kube-scheduler"
arg_wait_seconds=300
# The API server's certificate names `kubernetes` (kubeadm adds it, and kubernetes.default...),
# never 127.0.0.1: the name is asked for and resolved to --readyz-address, so the certificate is
# checked against the cluster's CA for a name it really carries.
arg_readyz_url=https://kubernetes:6443/readyz
arg_readyz_address=127.0.0.1
arg_ca_cert=/etc/kubernetes/pki/ca.crt
arg_cri_socket=unix:///run/containerd/containerd.sock

# --some-name VALUE pairs set arg_some_name; names not declared above are refused.
while (($#)); do
  [[ $1 == --?* && $# -ge 2 ]] || die "expected --name value pairs, got: $*"
  name=arg_${1#--}
  name=${name//-/_}
  [[ -v $name ]] || die "unknown argument: $1"
  printf -v "$name" '%s' "$2"
  shift 2
done
[[ $arg_renew_within_days =~ ^[1-9][0-9]{0,3}$ ]] ||
  die "--renew-within-days must be a whole number of days from 1 to 9999, not: $arg_renew_within_days"
[[ $arg_wait_seconds =~ ^[1-9][0-9]{0,4}$ ]] ||
  die "--wait-seconds must be a whole number of seconds from 1 to 99999, not: $arg_wait_seconds"
for name in manifests_dir work_dir ca_cert; do
  var=arg_$name
  [[ ${!var} == /?* ]] || die "--${name//_/-} must be an absolute path, not: ${!var}"
done
[[ ${arg_work_dir%/} != "${arg_manifests_dir%/}" ]] || die "--work-dir must not be --manifests-dir"
[[ $arg_readyz_url =~ ^https://([a-z0-9.-]+):([0-9]+)/ ]] ||
  die "--readyz-url must be an https://NAME:PORT/ URL, not: $arg_readyz_url"
readyz_resolve="${BASH_REMATCH[1]}:${BASH_REMATCH[2]}:$arg_readyz_address"
[[ $arg_readyz_address =~ ^[0-9.]+$ ]] || die "--readyz-address must be an IPv4 address, not: $arg_readyz_address"
[[ $arg_cri_socket == unix:///?* ]] || die "--cri-socket must be a unix:/// endpoint, not: $arg_cri_socket"
read -r -a components <<<"$arg_components"
((${#components[@]} > 0)) || die "--components names no component"
declare -A seen=()
for c in "${components[@]}"; do
  [[ $c =~ ^[a-z0-9][a-z0-9-]*$ ]] || die "--components: not a static pod's name: $c"
  [[ -z ${seen[$c]:-} ]] || die "--components names $c twice"
  seen[$c]=1
done
for tool in kubeadm crictl curl jq flock timeout cmp; do
  command -v "$tool" >/dev/null || die "$tool is not installed (the renewal needs it)"
done

mkdir -p "$arg_work_dir"
chmod 0700 "$arg_work_dir"
exec 9>>"$arg_work_dir/.lock"
flock -n 9 || die "another renewal is running (lock $arg_work_dir/.lock)"
tool_log=$arg_work_dir/tool.log
window=$((arg_renew_within_days * 86400))
poll=2

# --- static pods -----------------------------------------------------------------------------

# containers COMPONENT: the IDs of its running containers (none: empty); fails when crictl does
# not answer.
containers() {
  timeout 30 crictl --runtime-endpoint "$arg_cri_socket" ps --name "^$1\$" -q 2>>"$tool_log"
}
is_stopped() {
  local ids
  ids=$(containers "$1") || return 1
  [[ -z $ids ]]
}
is_running() {
  local ids
  ids=$(containers "$1") || return 1
  [[ -n $ids ]]
}
api_ready() {
  local answer
  answer=$(curl -sS --fail --cacert "$arg_ca_cert" --resolve "$readyz_resolve" --connect-timeout 5 --max-time 10 \
    "$arg_readyz_url" 2>>"$tool_log") &&
    [[ $answer == ok ]]
}

# wait_for CHECK ARGS...: CHECK every $poll s until it holds, for at most --wait-seconds (by the
# clock, and by the number of tries should the clock stand still).
wait_for() {
  local deadline=$((SECONDS + arg_wait_seconds)) tries=$((arg_wait_seconds / poll + 1))
  while ((tries-- > 0)); do
    if "$@"; then return 0; fi
    ((SECONDS < deadline)) || break
    sleep "$poll"
  done
  return 1
}

# put_back COMPONENT: its manifest from the work dir back where the kubelet reads it. Copied
# under a dot name first (the kubelet ignores those), then renamed: the kubelet never reads half a
# manifest, even when the two folders are on different file systems.
put_back() {
  local from=$arg_work_dir/$1.yaml to=$arg_manifests_dir/$1.yaml
  local tmp=$arg_manifests_dir/.$1.yaml.kata-mesh-renew-certs
  [[ -e $from ]] || return 0
  if [[ -e $to ]]; then
    # Someone wrote a manifest in the meantime (or a run stopped between the copy and the rename):
    # the one in place is the one the kubelet runs; a different copy is kept aside, not re-used.
    if cmp -s -- "$from" "$to"; then
      rm -f -- "$from"
    else
      mv -- "$from" "$from.replaced-$(date -u +%Y%m%dT%H%M%SZ)" || return 1
      log "$to was written meanwhile: kept it; the manifest this script had moved away is $from.replaced-*"
    fi
    return 0
  fi
  # Each step checked by hand: this also runs where errexit does not hold (a condition, the
  # exit trap), and the copy in the work dir goes only once the manifest is back.
  cp -p -- "$from" "$tmp" || return 1
  mv -f -- "$tmp" "$to" || return 1
  rm -f -- "$from"
}

# What is out of place while this run restarts a pod; put back however the run ends.
out=""
on_exit() {
  local status=$?
  if [[ -n $out ]]; then
    if put_back "$out"; then
      log "$out: its manifest is back in $arg_manifests_dir"
    else
      log "$out: could not put its manifest back: move $arg_work_dir/$out.yaml to $arg_manifests_dir/ by hand"
    fi
  fi
  rm -f -- "$arg_manifests_dir"/.*.yaml.kata-mesh-renew-certs 2>/dev/null || true
  # The tools' own words stay for a failed run only.
  if ((status == 0)); then rm -f -- "$tool_log"; fi
  exit "$status"
}
trap on_exit EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

hint() { printf "see \`crictl ps -a --name '^%s\$'\` and \`journalctl -u kubelet\`" "$1"; }

# wait_back COMPONENT: its container runs again (and, for the API server, /readyz answers ok).
wait_back() {
  wait_for is_running "$1" ||
    die "$1 did not start again within $arg_wait_seconds s after its manifest was put back ($(hint "$1"))"
  if [[ $1 == kube-apiserver ]]; then
    wait_for api_ready ||
      die "kube-apiserver runs again but $arg_readyz_url did not answer ok within $arg_wait_seconds s ($(tail -n 1 "$tool_log" 2>/dev/null))"
  fi
}

# restart COMPONENT: stopped and started again by moving its static pod manifest out and back.
restart() {
  local c=$1 manifest=$arg_manifests_dir/$1.yaml
  if [[ ! -f $manifest ]]; then
    log "$c: no manifest $manifest on this node, nothing to restart"
    return 0
  fi
  out=$c
  mv -- "$manifest" "$arg_work_dir/$c.yaml"
  if ! wait_for is_stopped "$c"; then
    die "$c did not stop within $arg_wait_seconds s after its manifest was moved away; the manifest goes back ($(hint "$c"))"
  fi
  put_back "$c"
  out=""
  wait_back "$c"
  log "$c restarted"
}

# 0. What an interrupted run left out of place goes back first.
rm -f -- "$arg_manifests_dir"/.*.yaml.kata-mesh-renew-certs 2>/dev/null || true
for left in "$arg_work_dir"/*.yaml; do
  [[ -f $left ]] || continue
  c=$(basename "$left" .yaml)
  log "$c: its manifest was left in $arg_work_dir by an interrupted run: putting it back"
  out=$c
  put_back "$c"
  out=""
  wait_back "$c"
done

# --- expiry ------------------------------------------------------------------------------------

# expiry: kubeadm's report on stdout, checked for the shape this script reads.
expiry() {
  local report
  report=$(kubeadm certs check-expiration -o json 2>>"$tool_log") ||
    die "kubeadm certs check-expiration failed: $(tail -n 1 "$tool_log")"
  jq -e '.kind == "CertificateExpirationInfo" and (.certificates | type) == "array"' <<<"$report" >/dev/null 2>&1 ||
    die "kubeadm certs check-expiration -o json printed no CertificateExpirationInfo (kubeadm 1.30 or newer is needed)"
  printf '%s\n' "$report"
}
# soonest REPORT: "RESIDUAL_SECONDS NAME EXPIRATION_DATE" of the renewable certificate that expires
# first.
soonest() {
  jq -er '[.certificates[] | select((.missing | not) and (.externallyManaged | not))]
    | if length == 0 then error("none") else min_by(.residualTime) end
    | "\(.residualTime) \(.name) \(.expirationDate)"' <<<"$1" 2>/dev/null ||
    die "kubeadm reports no certificate it can renew here (are the certificates externally managed?)"
}
# read_soonest REPORT: sets residual, name and date.
read_soonest() {
  local line
  line=$(soonest "$1")
  read -r residual name date <<<"$line"
  [[ $residual =~ ^-?[0-9]+$ ]] || die "kubeadm reports a residualTime that is not a number of seconds: $line"
}
describe() {
  local seconds=$1 name=$2 date=$3
  if ((seconds < 0)); then
    printf '%s EXPIRED %s (%d days ago)' "$name" "$date" $((-seconds / 86400))
  else
    printf '%s expires %s (in %d days)' "$name" "$date" $((seconds / 86400))
  fi
}

: >"$tool_log"
report=$(expiry)
read_soonest "$report"
while read -r ca_residual ca_name ca_date; do
  log "WARNING: the CA $ca_name expires $ca_date (in $((ca_residual / 86400)) days); \`kubeadm certs renew\` does not renew CAs"
done < <(jq -r --argjson window "$window" '.certificateAuthorities // [] | .[]
  | select((.missing | not) and .residualTime < $window) | "\(.residualTime) \(.name) \(.expirationDate)"' <<<"$report")

if ((residual >= window)); then
  log "nothing to renew: the soonest, $(describe "$residual" "$name" "$date"), is beyond the $arg_renew_within_days-day window"
  exit 0
fi

log "$(describe "$residual" "$name" "$date"), within the $arg_renew_within_days-day window: renewing all certificates"
# kubeadm's own umask (the rest of this script keeps 077): files it writes get the modes it means.
(umask 022 && kubeadm certs renew all) >"$tool_log" 2>&1 || die "kubeadm certs renew all failed: $(tail -n 1 "$tool_log")"
for c in "${components[@]}"; do
  restart "$c"
done

report=$(expiry)
read_soonest "$report"
((residual >= window)) ||
  die "renewed, but the soonest, $(describe "$residual" "$name" "$date"), is still within the $arg_renew_within_days-day window"
log "renewed and restarted: ${components[*]}"
printf 'kubeadm certificates renewed; the soonest, %s\n' "$(describe "$residual" "$name" "$date")"
