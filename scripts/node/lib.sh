# shellcheck shell=bash
# Helpers shared by the node steps. The program sends each step as this file followed by the
# step script, on stdin to `sudo bash -s -- ARGS`; run from a checkout, a step sources it instead.

km_log() { printf '[kata-mesh] %s\n' "$*" >&2; }

km_die() {
  printf '[kata-mesh] ERROR: %s\n' "$*" >&2
  exit 1
}

# km_parse_args --some-name VALUE ...: sets arg_some_name=VALUE for each pair. Each step declares
# its arg_* variables (with defaults) before calling this, so unknown names are refused.
km_parse_args() {
  while (($#)); do
    [[ $1 == --?* && $# -ge 2 ]] || km_die "expected --name value pairs, got: $*"
    local name=${1#--}
    name=arg_${name//-/_}
    [[ -v $name ]] || km_die "unknown argument: $1"
    printf -v "$name" '%s' "$2"
    shift 2
  done
}

# km_require_args NAME...: fails naming every missing --name.
km_require_args() {
  local name var missing=()
  for name in "$@"; do
    var=arg_$name
    [[ -n ${!var} ]] || missing+=("--${name//_/-}")
  done
  ((${#missing[@]} == 0)) || km_die "missing required argument(s): ${missing[*]}"
}

km_sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# km_fetch_verified URL SHA256 DEST: downloads URL with retries and backoff, and moves it to DEST
# only if its sha256 matches. A DEST already there with the right checksum is kept as it is.
km_fetch_verified() {
  local url=$1 sha256=$2 dest=$3 part actual
  if [[ -f $dest && $(km_sha256_of "$dest") == "$sha256" ]]; then
    return 0
  fi
  mkdir -p "$(dirname "$dest")"
  part=$(mktemp "$dest.XXXXXX.part")
  km_log "downloading $url"
  # Without --retry-delay, curl backs off exponentially between its retries.
  if ! curl -fsSL --retry 6 --retry-all-errors --connect-timeout 20 --max-time 1800 -o "$part" "$url"; then
    rm -f "$part"
    km_die "could not download $url (network, proxy or artifact mirror?)"
  fi
  actual=$(km_sha256_of "$part")
  if [[ $actual != "$sha256" ]]; then
    rm -f "$part"
    km_die "checksum mismatch for $url: expected sha256 $sha256, got $actual; nothing was installed"
  fi
  mv -f "$part" "$dest"
}

# km_put_file DEST MODE CONTENT: writes CONTENT (plus a final newline) to DEST unless DEST already
# holds exactly that, and sets km_changed=true or false so callers restart only what changed.
# shellcheck disable=SC2034 # read by the step scripts
km_changed=false
km_put_file() {
  local dest=$1 mode=$2 content=$3 tmp
  mkdir -p "$(dirname "$dest")"
  tmp=$(mktemp "$dest.XXXXXX.new")
  printf '%s\n' "$content" >"$tmp"
  if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then
    rm -f "$tmp"
    km_changed=false
    return 0
  fi
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$dest"
  km_log "wrote $dest"
  # shellcheck disable=SC2034 # read by the step scripts
  km_changed=true
}

# Records of what a step installed, so a second run with the same artifact changes nothing.
km_state_dir=/var/lib/kata-mesh/installed
km_is_installed() { [[ -f $km_state_dir/$1 && $(<"$km_state_dir/$1") == "$2" ]]; }
km_mark_installed() {
  mkdir -p "$km_state_dir"
  printf '%s\n' "$2" >"$km_state_dir/$1"
}

km_apt() {
  # Waits for the apt lock (cloud-init and unattended-upgrades hold it after boot).
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q "$@"
}

# apt-get update takes the lists lock, which Lock::Timeout does not cover while apt-daily runs.
km_apt_update() {
  local attempt
  for attempt in 1 2 3 4 5 6; do
    km_apt update && return 0
    km_log "apt-get update failed (attempt $attempt); retrying"
    sleep $((attempt * 10))
  done
  km_die "apt-get update keeps failing"
}

# km_apt_ensure PACKAGE...: installs the packages that are missing, refreshing the index once.
km_apt_ensure() {
  local pkg missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  km_apt_update
  km_apt install -y --no-install-recommends "${missing[@]}"
}

# km_kernel_prerequisites MODULES SYSCTLS (each a space-separated list): what kubeadm and Kata need
# from the kernel, on a fresh VM (10-prerequisites.sh) and on one booted from a node image
# (12-node-image.sh), whose files are baked but whose VM may still lack nested virtualization.
# Swap off and kept off; the modules loaded and persisted; /dev/kvm present; the sysctls persisted,
# applied when the file changed, and each one read back.
km_kernel_prerequisites() {
  local modules sysctls module setting key kvm_help
  read -r -a modules <<<"$1"
  read -r -a sysctls <<<"$2"
  kvm_help="likely causes: nested virtualization is not enabled on this VM \
(advancedMachineFeatures.enableNestedVirtualization), the organization policy \
constraints/compute.disableNestedVirtualization forbids it, or the machine series has no Intel \
VT-x (E2, AMD and Arm series)"

  # Swap off now and after reboots: kubelet refuses to start with swap on.
  swapoff -a
  if grep -Eq '^[^#].*[[:space:]]swap[[:space:]]' /etc/fstab; then
    sed -i -E 's/^([^#].*[[:space:]]swap[[:space:]].*)$/# \1/' /etc/fstab
    km_log "commented out swap in /etc/fstab"
  fi

  grep -qw vmx /proc/cpuinfo || km_die "this CPU exposes no VT-x (vmx flag missing); $kvm_help"

  km_put_file /etc/modules-load.d/kata-mesh.conf 0644 "$(printf '%s\n' "${modules[@]}")"
  for module in "${modules[@]}"; do
    modprobe "$module" || km_die "cannot load kernel module $module"
  done
  [[ -c /dev/kvm ]] || km_die "/dev/kvm is missing; $kvm_help"

  km_put_file /etc/sysctl.d/99-kata-mesh.conf 0644 "$(printf '%s\n' "${sysctls[@]}")"
  if $km_changed; then
    sysctl --quiet --system
  fi
  for setting in "${sysctls[@]}"; do
    key=${setting%%=*}
    [[ $(sysctl -n "$key") == "${setting#*=}" ]] || km_die "sysctl $key is not ${setting#*=}"
  done
}

# km_kata_check PREFIX: `kata-runtime check` of the Kata release in PREFIX must pass (offline: no
# network checks), and as root it must also say that Kata can create VMs on this VM right now.
km_kata_check() {
  local prefix=${1%/} status=0 report
  report=$("$prefix/bin/kata-runtime" check --no-network-checks 2>&1) || status=$?
  if ((status != 0)) || [[ $report != *"System is capable of running Kata Containers"* ]]; then
    km_die "kata-runtime check failed (exit $status); this node cannot run Kata:
$report"
  fi
  if ((EUID == 0)) && [[ $report != *"System can currently create Kata Containers"* ]]; then
    km_die "kata-runtime check: capable, but cannot currently create Kata Containers:
$report"
  fi
  km_log "kata-runtime check passed"
}

# km_kubernetes_apt_source REPOSITORY: pkgs.k8s.io's apt repository of one minor (its URL names
# the minor) as the only Kubernetes source, with its signing key, fetched again when the repository
# changes (a minor upgrade).
km_kubernetes_apt_source() {
  local repository=$1 keyring=/etc/apt/keyrings/kubernetes-apt-keyring.gpg key
  km_put_file /etc/apt/sources.list.d/kubernetes.list 0644 "deb [signed-by=$keyring] $repository /"
  if $km_changed || [[ ! -s $keyring ]]; then
    key=$(mktemp)
    curl -fsSL --retry 6 --retry-all-errors --connect-timeout 20 -o "$key" "${repository%/}/Release.key" ||
      km_die "could not download the Kubernetes apt key from $repository"
    mkdir -p "$(dirname "$keyring")"
    gpg --batch --yes --dearmor -o "$keyring" "$key"
    chmod 0644 "$keyring"
    rm -f "$key"
  fi
}

# km_install_kubernetes_packages VERSION CNI_TARBALL CNI_SHA256 PACKAGE...: the packages at VERSION
# (pkgs.k8s.io's VERSION-* revisions), held so that unattended upgrades never move them; nothing
# when they are there already (km_packages_changed says whether anything was installed). The packages pull in kubernetes-cni, which writes its own plugins
# over /opt/cni/bin: the pinned, checksummed ones (the containerd step's download) go back.
# shellcheck disable=SC2034 # km_packages_changed is read by the step scripts
km_install_kubernetes_packages() {
  local version=$1 cni_tarball=$2 cni_sha256=$3 pkg installed missing=()
  shift 3
  km_packages_changed=false
  for pkg in "$@"; do
    installed=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || true)
    [[ $installed == "$version"-* ]] || missing+=("$pkg")
  done
  if ((${#missing[@]} > 0)); then
    km_apt_update
    apt-mark unhold "$@" >/dev/null 2>&1 || true
    km_apt install -y --no-install-recommends --allow-change-held-packages "${missing[@]/%/=$version-*}"
    km_packages_changed=true
  fi
  # Whenever they differ from the pinned release (also after a run that died past the install).
  if ! tar -dzf "$cni_tarball" -C /opt/cni/bin >/dev/null 2>&1; then
    [[ $(km_sha256_of "$cni_tarball") == "$cni_sha256" ]] ||
      km_die "$cni_tarball is not the pinned CNI plugins release"
    tar -xzf "$cni_tarball" -C /opt/cni/bin
    km_log "restored the pinned CNI plugins in /opt/cni/bin"
  fi
  apt-mark hold "$@" >/dev/null
  if dpkg-query -W kubernetes-cni >/dev/null 2>&1; then
    apt-mark hold kubernetes-cni >/dev/null
  fi
  for pkg in "$@"; do
    installed=$(dpkg-query -W -f='${Version}' "$pkg")
    [[ $installed == "$version"-* ]] || km_die "$pkg is at $installed, not $version"
  done
}

# km_cluster_configuration: the ClusterConfiguration kubeadm keeps in the kubeadm-config
# ConfigMap (the cluster's own settings and the version it runs), on stdout. Needs KUBECONFIG.
km_cluster_configuration() {
  kubectl -n kube-system get configmap kubeadm-config -o jsonpath='{.data.ClusterConfiguration}'
}

# km_cluster_kubernetes_version: the version the cluster runs (kubeadm-config's kubernetesVersion,
# vX.Y.Z), on stdout; dies, changing nothing, when it cannot be read.
km_cluster_kubernetes_version() {
  local config
  config=$(km_cluster_configuration) || km_die "could not read the cluster's version (kubeadm-config); nothing was changed"
  sed -n 's/^kubernetesVersion: *//p' <<<"$config"
}

# km_require_rollout ROLLOUT: dies unless ROLLOUT is a rollout's sha256 (components/rollout.py).
# km_require_timeout_seconds VALUE: --timeout-seconds is a whole number of seconds, at least 1.
km_require_timeout_seconds() {
  [[ $1 =~ ^[1-9][0-9]*$ ]] || km_die "--timeout-seconds must be a whole number of seconds, not: $1"
}

# km_require_needed VALUE: --needed is 83-rollout-check.sh's answer.
km_require_needed() {
  case $1 in
    current | needed) ;;
    *) km_die "--needed must be needed or current (83-rollout-check.sh's answer), not: '$1'" ;;
  esac
}

km_require_rollout() {
  [[ $1 =~ ^[0-9a-f]{64}$ ]] || km_die "--rollout must be a sha256 (64 lowercase hex digits), not: $1"
}

# km_check_kubernetes_upgrade LIVE TARGET: dies, changing nothing, when kubeadm cannot take the
# cluster from version LIVE to TARGET (vX.Y.Z or X.Y.Z): a downgrade, or more than one minor up
# (kubeadm upgrades one minor at a time).
km_check_kubernetes_upgrade() {
  local live=${1#v} target=${2#v} live_minor target_minor
  [[ $live =~ ^[0-9]+\.([0-9]+)\.[0-9]+$ ]] || km_die "the cluster reports no version kubeadm wrote (kubeadm-config says '$1'); nothing was changed"
  live_minor=${BASH_REMATCH[1]}
  [[ $target =~ ^[0-9]+\.([0-9]+)\.[0-9]+$ ]] || km_die "kubernetesVersion must be MAJOR.MINOR.PATCH, not: $2"
  target_minor=${BASH_REMATCH[1]}
  if [[ ${live%%.*} != "${target%%.*}" ]] || ((target_minor > live_minor + 1)); then
    km_die "the cluster runs v$live; kubeadm upgrades one minor at a time, so v$target cannot come next: set kubernetesVersion to the newest 1.$((live_minor + 1)) patch first, run pulumi up, then go on. Nothing was changed"
  fi
  if [[ $(printf '%s\n%s\n' "$live" "$target" | sort -V | head -n 1) != "$live" ]]; then
    km_die "the cluster runs v$live and kubernetesVersion says v$target: kubeadm does not downgrade. Set kubernetesVersion back to $live or newer. Nothing was changed"
  fi
}

# km_etcdctl ARGS...: etcdctl inside this control plane's own etcd container (nodes have no
# etcdctl of their own, and the container's matches the etcd it talks to), as a client of the
# local member with kubeadm's etcd certificates. Works while the API server is down.
km_etcdctl() {
  local container
  container=$(crictl ps --name '^etcd$' --state Running -q | head -n 1)
  [[ -n $container ]] || km_die "no running etcd container on this node (is it a control plane?)"
  crictl exec "$container" etcdctl --endpoints=https://127.0.0.1:2379 \
    --cacert=/etc/kubernetes/pki/etcd/ca.crt \
    --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
    --key=/etc/kubernetes/pki/etcd/healthcheck-client.key "$@"
}

# km_etcd_members NAME: etcd's membership as it bears on member NAME. `member list -w simple`
# prints the IDs in hex (its JSON holds them as 64-bit integers, which jq would round) and one
# line per member: ID, STATUS, NAME, PEER ADDRS, CLIENT ADDRS, IS LEARNER, the URLs of a field
# separated by "," alone. An unstarted member has no name and no client URLs yet; a learner does
# not vote, so it counts for neither the quorum nor the survivors. Sets km_member_id (empty: NAME
# is no member), km_member_urls, km_member_is_learner, km_voters (voting members, NAME's
# included), km_survivors (the other voting members, by name or "unstarted member ID") and
# km_survivor_urls (their client URLs, by that label). Returns 1 when etcd cannot be listed.
# shellcheck disable=SC2034 # read by the step scripts
km_etcd_members() {
  local name=$1 members id member_name client_urls is_learner label
  members=$(km_etcdctl member list -w simple) || return 1
  km_member_id="" km_member_urls="" km_member_is_learner=false km_voters=0
  km_survivors=()
  declare -gA km_survivor_urls=()
  while IFS='|' read -r id _ member_name _ client_urls is_learner; do
    [[ -n $id ]] || continue
    if [[ -n $member_name && $member_name == "$name" ]]; then
      km_member_id=$id
      km_member_urls=$client_urls
      [[ $is_learner == true ]] && km_member_is_learner=true
    fi
    [[ $is_learner == true ]] && continue
    km_voters=$((km_voters + 1))
    [[ -n $member_name && $member_name == "$name" ]] && continue
    label=${member_name:-"unstarted member $id"}
    km_survivors+=("$label")
    km_survivor_urls[$label]=$client_urls
  done <<<"${members//, /|}"
}

# km_etcd_health: which client URLs answer (`endpoint health --cluster`, which exits non-zero when
# one is unhealthy, printing the JSON all the same; one that cannot commit a read within 3 s,
# etcdctl's default being 5, is not one to count on for a quorum). Sets km_healthy_urls, one a
# line, and km_health_output (what etcdctl printed); returns 1 when that is no health report.
km_etcd_health() {
  km_health_output=$(km_etcdctl endpoint health --cluster -w json --command-timeout=3s 2>/dev/null) || true
  jq -e 'type == "array"' <<<"$km_health_output" >/dev/null 2>&1 || return 1
  km_healthy_urls=$(jq -r '.[] | select(.health == true) | .endpoint' <<<"$km_health_output")
}

# km_etcd_healthy URLS: one of these comma-separated client URLs answered km_etcd_health.
km_etcd_healthy() {
  local url urls
  IFS=, read -ra urls <<<"$1"
  for url in "${urls[@]}"; do
    grep -qxF -- "$url" <<<"$km_healthy_urls" && return 0
  done
  return 1
}

# km_etcd_unhealthy_survivors: sets km_unhealthy, the survivors (km_etcd_members) none of whose
# client URLs answered (km_etcd_health), and what they make of a quorum once the member goes:
# km_remaining (their count), km_healthy_remaining, km_quorum (remaining / 2 + 1).
# shellcheck disable=SC2034 # read by the step scripts
km_etcd_unhealthy_survivors() {
  local label
  km_unhealthy=()
  for label in "${km_survivors[@]}"; do
    km_etcd_healthy "${km_survivor_urls[$label]}" || km_unhealthy+=("$label")
  done
  km_remaining=${#km_survivors[@]}
  km_healthy_remaining=$((km_remaining - ${#km_unhealthy[@]}))
  km_quorum=$((km_remaining / 2 + 1))
}

# km_forget_member NAME TIMEOUT: forgets control plane NAME's old VM, as its replacement is about to
# join: its dead etcd member and its Node go, once the member is sure to be dead (one that answers
# is NAME serving already) and the members that remain keep a quorum of healthy ones. Sets
# km_forgotten: absent (NAME is no member: a first join, or forgotten already), serving (NAME's
# member answers) or forgot. Dies, changing nothing, when etcd cannot be read or the quorum would
# not hold. Needs the admin kubeconfig and this node's etcd (km_etcdctl).
# shellcheck disable=SC2034 # km_forgotten is read by the step scripts
km_forget_member() {
  local name=$1 timeout=$2 member_id
  # One membership change at a time, with the removals of 85-remove-control-plane.sh too: each one
  # checks the membership the previous one left.
  mkdir -p /run/lock
  exec 9>>/run/lock/kata-mesh-remove-control-plane
  flock -w 900 9 || km_die "another control plane removal is still running after 900s; nothing was changed"

  # 1. etcd's membership (km_etcd_members, as 85-remove-control-plane.sh reads it).
  km_etcd_members "$name" || km_die "could not list etcd's members; nothing was changed"
  member_id=$km_member_id
  km_forgotten=absent
  if [[ -z $member_id ]]; then
    km_log "$name is no etcd member: nothing to forget (a first join, or its old member is gone already)"
    return 0
  fi

  # 2. Health of every member's client URLs (km_etcd_health).
  km_etcd_health ||
    km_die "could not read etcd's endpoint health (etcdctl printed: ${km_health_output:-nothing}); nothing was changed"

  # A member that answers is this node's own, already joined: the old VM is deleted before its
  # replacement exists (GCE names are unique), so it cannot be the old one. This step also runs
  # again when its script changes, long after the join: then there is nothing to forget.
  if km_etcd_healthy "$km_member_urls"; then
    km_forgotten=serving
    km_log "$name's etcd member $member_id answers at ${km_member_urls:-its client URL}: $name serves as a member already; nothing to forget"
    return 0
  fi

  # 3. The quorum of the members that remain (removing a dead member only makes it easier to keep,
  # but a cluster that lost it already must not be reconfigured behind its back).
  km_etcd_unhealthy_survivors
  km_log "etcd: $name (member $member_id) does not answer; without it, $km_healthy_remaining of $km_remaining healthy (quorum $km_quorum)"
  if ((km_healthy_remaining < km_quorum)); then
    km_die "forgetting $name would leave etcd without quorum: of the $km_remaining members that would remain, $km_healthy_remaining healthy where $km_quorum are needed; unhealthy: ${km_unhealthy[*]}. Bring them back first, then run pulumi up again; nothing was changed"
  fi

  # 4. The old VM's Node first, then its member: a run that fails after the Node is gone still finds
  # the member, and does both again. kubeadm join stops when a Node of its name exists and is Ready
  # ("a Node with name ... and status Ready already exists in the cluster. You must delete the
  # existing Node", its kubelet-start phase): the old Node stays Ready for the node monitor's grace
  # period after its VM went, and its pods and mirror pods are the old VM's.
  km_log "deleting the old VM's Node $name"
  timeout "$timeout" kubectl --kubeconfig "$km_admin_kubeconfig" delete node "$name" --ignore-not-found >&2 ||
    km_die "could not delete Node $name (its etcd member $member_id is still there); run pulumi up again"
  km_log "removing $name's old etcd member $member_id"
  km_etcdctl member remove "$member_id" >&2 ||
    km_die "could not remove $name's old etcd member $member_id; run pulumi up again"
  km_forgotten=forgot
  km_log "forgot $name's old VM: etcd member $member_id and its Node are gone; it can join again"
}

# km_with_certificate_key CONFIG KEY: the kubeadm config file with `certificateKey: KEY` added to
# its InitConfiguration, on stdout (the program renders that document without it, so the key
# never travels on a command line nor stays on disk). Pure bash: a key handed to sed or awk would
# show in the process list.
km_with_certificate_key() {
  local config=$1 key=$2 line found=false
  while IFS= read -r line || [[ -n $line ]]; do
    printf '%s\n' "$line"
    if [[ $line == "kind: InitConfiguration" ]]; then
      printf 'certificateKey: %s\n' "$key"
      found=true
    fi
  done <"$config"
  $found || km_die "$config has no InitConfiguration"
}

# km_upload_certs CONFIG KEY: uploads this control plane's shared certificates (kubeadm's
# kubeadm-certs Secret, encrypted with KEY) with the cluster settings in kubeadm config CONFIG, for
# a control plane about to join; the Secret expires two hours later. One upload at a time on this
# node: two would rewrite the same Secret. The key goes into a 0600 file under /run for kubeadm's
# run only (`--certificate-key` cannot be combined with `--config`) and out of its output.
km_upload_certs() {
  local config=$1 key=$2 keyed_config
  [[ $key =~ ^[0-9a-f]{64}$ ]] || km_die "the certificate key must be 64 lowercase hex digits"
  keyed_config=$(mktemp /run/kata-mesh-upload-certs.XXXXXX.yaml)
  chmod 0600 "$keyed_config"
  km_with_certificate_key "$config" "$key" >"$keyed_config"
  mkdir -p /run/lock
  if ! flock /run/lock/kata-mesh-upload-certs kubeadm init phase upload-certs --upload-certs \
    --config "$keyed_config" 2>&1 | km_hide "$key" >&2; then
    rm -f "$keyed_config"
    km_die "could not upload the control-plane certificates; see the output above"
  fi
  rm -f "$keyed_config"
}

# km_redirect_endpoint add HOST PORT TARGET | km_redirect_endpoint remove: this node's own
# connections to HOST:PORT go to TARGET:PORT instead, from this node's own address, until removed.
# For the first control plane joining the survivors again: HOST is the API load balancer, which
# GCE delivers to each of its backends itself (the guest environment makes the address local),
# and this node's API server is not up yet. Masqueraded: the survivor, to which the load
# balancer's address is local too, must answer this node's own address.
km_rejoin_table=kata_mesh_rejoin
km_redirect_endpoint() {
  local action=$1 octet ipv4
  octet='(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])'
  ipv4="$octet\\.$octet\\.$octet\\.$octet"
  case $action in
    add)
      local host=$2 port=$3 target=$4
      # The priorities are dstnat's and srcnat's numbers: nft before 1.0.9 (Debian 12's) takes
      # the names on prerouting and postrouting only.
      [[ $host =~ ^$ipv4$ && $target =~ ^$ipv4$ && $port =~ ^[1-9][0-9]{0,4}$ && $port -le 65535 ]] ||
        km_die "km_redirect_endpoint: HOST and TARGET must be IPv4 addresses and PORT a port, not: $host $port $target"
      nft -f - <<EOF || km_die "could not redirect $host:$port to $target:$port (nft)"
table ip $km_rejoin_table
delete table ip $km_rejoin_table
table ip $km_rejoin_table {
  chain output {
    type nat hook output priority -100; policy accept;
    ip daddr $host tcp dport $port dnat to $target:$port
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    ip daddr $target tcp dport $port ct status dnat masquerade
  }
}
EOF
      km_log "connections to $host:$port go to $target:$port until this node's API server serves"
      ;;
    remove)
      if nft list table ip "$km_rejoin_table" >/dev/null 2>&1; then
        nft delete table ip "$km_rejoin_table" || km_die "could not remove nftables table ip $km_rejoin_table"
      fi
      ;;
    *) km_die "km_redirect_endpoint: add or remove, not: $action" ;;
  esac
}

# km_wait_local_api TIMEOUT: waits up to TIMEOUT seconds for this control plane's own API server
# (anonymous /readyz on 127.0.0.1:6443, the address every API server listens on); dies naming where
# to look when it does not answer.
km_wait_local_api() {
  local timeout=$1 deadline
  deadline=$((SECONDS + timeout))
  until curl -fsk --max-time 5 https://127.0.0.1:6443/readyz >/dev/null 2>&1; do
    ((SECONDS < deadline)) ||
      km_die "this control plane's API server does not answer on 127.0.0.1:6443 after ${timeout}s: see sudo crictl ps -a and journalctl -u kubelet"
    sleep 5
  done
}

# km_hide SECRET: copies stdin to stdout line by line (as it comes) with every occurrence of
# SECRET replaced, for tools that print what the logs must not keep. Pure bash, for the same
# reason.
km_hide() {
  local secret=$1 line
  [[ -n $secret ]] || km_die "km_hide needs the text to hide"
  while IFS= read -r line || [[ -n $line ]]; do
    printf '%s\n' "${line//"$secret"/[hidden]}"
  done
}

# km_set_workload_role NODE TAKES_WORKLOADS KATA_LABEL: a control plane that takes workloads
# (a cluster without workers) loses kubeadm's NoSchedule taint and carries the Kata label; one
# that does not is tainted and unlabelled. Needs KUBECONFIG.
km_set_workload_role() {
  local node=$1 takes_workloads=$2 kata_label=$3
  local taint=node-role.kubernetes.io/control-plane label_key=${3%%=*} taints
  if [[ $takes_workloads == true ]]; then
    # Read whole first: grep -q stopping early would fail the pipeline (pipefail, SIGPIPE).
    taints=$(kubectl get node "$node" -o jsonpath='{.spec.taints[*].key}')
    if [[ " $taints " == *" $taint "* ]]; then
      kubectl taint node "$node" "$taint:NoSchedule-" >&2
    fi
    kubectl label node "$node" "$kata_label" --overwrite >&2
  else
    kubectl taint node "$node" "$taint=:NoSchedule" --overwrite >&2
    if kubectl get node "$node" -o json | jq -e --arg key "$label_key" '.metadata.labels | has($key)' >/dev/null; then
      kubectl label node "$node" "$label_key-" >&2
    fi
  fi
}

# km_put_api_server_files ENCRYPTION_FILE ENCRYPTION_CONFIG_B64 POLICY_FILE POLICY_B64 LOG_DIR IN_SERVICE:
# on a control plane, before the API server that reads them starts: writes the
# EncryptionConfiguration (root-only, in a root-only directory) and the audit policy where
# ClusterConfiguration points the API server, and makes the audit log's directory; a file already
# as given is left alone. IN_SERVICE=true (this node's API server runs on them) refuses to swap the
# encryption config for another: the API server would read it at its next restart and could no
# longer decrypt the Secrets written with the old key. Pure bash for everything that holds the
# key: decoded from a here-string (stdin, not arguments), compared and written by builtins.
km_put_api_server_files() {
  local encryption_file=$1 encryption_b64=$2 policy_file=$3 policy_b64=$4 log_dir=$5 in_service=$6
  local encryption policy current path
  for path in "$encryption_file" "$policy_file" "$log_dir"; do
    [[ $path == /?*/?* ]] || km_die "not an absolute path in a folder: $path"
  done
  encryption=$(base64 -d <<<"$encryption_b64") || km_die "the encryption config is not base64"
  [[ $encryption == *"kind: EncryptionConfiguration"* ]] || km_die "the encryption config is no EncryptionConfiguration"
  policy=$(base64 -d <<<"$policy_b64") || km_die "--audit-policy-b64 is not base64"
  [[ $policy == *"kind: Policy"* ]] || km_die "--audit-policy-b64 is no audit Policy"
  if [[ $in_service == true && -f $encryption_file ]]; then
    current=$(<"$encryption_file")
    [[ $current == "$encryption" ]] ||
      km_die "$encryption_file already holds another encryption config and this API server runs on it; replacing it would leave the Secrets written with the old key unreadable. Rotate keys by hand (https://kubernetes.io/docs/tasks/administer-cluster/encrypt-data/#rotating-a-decryption-key) or rebuild the cluster"
  fi
  mkdir -p "${encryption_file%/*}" "${policy_file%/*}" "$log_dir"
  chmod 0700 "${encryption_file%/*}" "$log_dir"
  km_put_file "$encryption_file" 0600 "$encryption"
  chmod 0600 "$encryption_file"
  km_put_file "$policy_file" 0600 "$policy"
  chmod 0600 "$policy_file"
}

# km_drop_super_admin: kubeadm init leaves /etc/kubernetes/super-admin.conf, a client certificate
# in system:masters that bypasses RBAC; kubeadm's docs say it "must be stored in a safe location".
# Once admin.conf (group kubeadm:cluster-admins, bound to cluster-admin) can do everything, it
# leaves the node. Regenerate it on a control plane only when RBAC itself is broken:
#   sudo kubeadm init phase kubeconfig super-admin --config /etc/kubernetes/kubeadm-init.yaml \
#     --kubeconfig-dir /root/break-glass
# Needs KUBECONFIG=admin.conf.
km_drop_super_admin() {
  local super_admin=/etc/kubernetes/super-admin.conf
  [[ -e $super_admin ]] || return 0
  kubectl auth can-i '*' '*' --all-namespaces >/dev/null 2>&1 ||
    km_die "admin.conf cannot do everything yet (is the kubeadm:cluster-admins ClusterRoleBinding there?); $super_admin stays until it can"
  rm -f "$super_admin"
  km_log "removed $super_admin (system:masters, bypasses RBAC); regenerate it only when RBAC is broken: kubeadm init phase kubeconfig super-admin"
}

# km_delete_bootstrap_tokens DESCRIPTION...: deletes every bootstrap token with one of these
# descriptions, by its ID. `kubeadm token list -o json` prints one JSON object per token (kind
# BootstrapToken, output.kubeadm.k8s.io/v1alpha3: "token" is "ID.SECRET", "description" is left out
# when empty), one after the other, not a list; the secrets stay in a variable and on jq's stdin.
# Needs KUBECONFIG.
km_delete_bootstrap_tokens() {
  local listed ids id
  listed=$(kubeadm token list -o json) || km_die "could not list the bootstrap tokens"
  ids=$(jq -r '. as $t | select(any($ARGS.positional[]; . == $t.description)) | .token | split(".")[0]' \
    --args "$@" <<<"$listed" 2>/dev/null) || km_die "could not read kubeadm's token list"
  for id in $ids; do
    [[ $id =~ ^[a-z0-9]{6}$ ]] || km_die "kubeadm listed a token whose ID is not [a-z0-9]{6}"
    kubeadm token delete "$id" >&2
  done
}

# km_service_account_kubeconfig ACCOUNT NAMESPACE SECONDS FILE: writes FILE, a kubeconfig that acts
# as the ServiceAccount NAMESPACE/ACCOUNT (a token for it valid SECONDS, at least 600: the API
# server's minimum) against admin.conf's API server and CA. admin.conf serves for that alone:
# `kubectl create token`, and reading its cluster entry. FILE is made anew under umask 077 (0600
# from its first byte); its folder should be private too. The token stays in a variable and
# reaches the file through jq's stdin: never an argument (the process list), never printed.
km_admin_kubeconfig=/etc/kubernetes/admin.conf
km_service_account_kubeconfig() {
  local account=$1 namespace=$2 seconds=$3 file=$4 cluster server ca token
  if ! [[ $seconds =~ ^[1-9][0-9]*$ ]] || ((seconds < 600)); then
    km_die "a token lives 600 seconds at least, not: $seconds"
  fi
  cluster=$(kubectl --kubeconfig "$km_admin_kubeconfig" config view --minify --raw \
    -o 'jsonpath={.clusters[0].cluster.server}{"\n"}{.clusters[0].cluster.certificate-authority-data}') ||
    km_die "could not read the cluster from $km_admin_kubeconfig"
  server=${cluster%%$'\n'*}
  ca=${cluster#*$'\n'}
  [[ $server == https://* && -n $ca && $cluster == *$'\n'* ]] ||
    km_die "$km_admin_kubeconfig names no https server with its CA data"
  token=$(kubectl --kubeconfig "$km_admin_kubeconfig" -n "$namespace" create token "$account" \
    --duration="${seconds}s") ||
    km_die "could not mint a token for ServiceAccount $namespace/$account (is it declared? components/proof_access.py)"
  [[ $token =~ ^[A-Za-z0-9._-]+$ ]] || km_die "kubectl create token printed no token"
  rm -f "$file"
  (
    umask 077
    jq -R --arg server "$server" --arg ca "$ca" --arg user "$namespace/$account" '{
      apiVersion: "v1", kind: "Config", "current-context": "proof",
      clusters: [{name: "cluster", cluster: {server: $server, "certificate-authority-data": $ca}}],
      users: [{name: $user, user: {token: .}}],
      contexts: [{name: "proof", context: {cluster: "cluster", user: $user}}]
    }' <<<"$token" >"$file"
  ) || km_die "could not write $file"
}

# km_kubernetes_images VERSION: the images kubeadm runs for vVERSION, one per line into the array
# km_images (kubeadm lists them offline when given the version).
km_kubernetes_images() {
  local version=$1 listed line
  listed=$(kubeadm config images list --kubernetes-version "$version") ||
    km_die "kubeadm config images list --kubernetes-version $version failed"
  km_images=()
  while IFS= read -r line; do
    if [[ $line =~ ^[^[:space:]]+/[^[:space:]]+:[^[:space:]]+$ ]]; then
      km_images+=("$line")
    elif [[ -n $line ]]; then
      km_die "kubeadm config images list printed a line that is no image: $line"
    fi
  done <<<"$listed"
  ((${#km_images[@]} > 0)) || km_die "kubeadm config images list --kubernetes-version $version lists no image"
}

# km_missing_images SOCKET: which of km_images containerd (at SOCKET, unix:///...) does not hold,
# into the array km_missing.
km_missing_images() {
  local socket=$1 image
  km_missing=()
  for image in "${km_images[@]}"; do
    crictl --runtime-endpoint "$socket" --image-endpoint "$socket" inspecti "$image" >/dev/null 2>&1 ||
      km_missing+=("$image")
  done
}

# km_wait_containerd: until containerd answers on its socket (30 s at most), or dies saying why.
km_wait_containerd() {
  local _
  for _ in $(seq 1 30); do
    /usr/local/bin/ctr --address /run/containerd/containerd.sock version >/dev/null 2>&1 && break
    sleep 1
  done
  /usr/local/bin/ctr --address /run/containerd/containerd.sock version >/dev/null ||
    km_die "containerd did not come up: $(systemctl status containerd --no-pager 2>&1 | tail -n 20)"
  km_log "containerd ready"
}

# km_node_at VERSION MARKER ROLLOUT: a new VM's last word: kubelet enabled (kubeadm init or join
# starts it), and the node recorded at this Kubernetes version and rollout. Its kubelet starts on
# these packages and it joins at this version: no restart and no `kubeadm upgrade node` owed to it
# (88-rollout-kubernetes.sh reads both); MARKER says the rollout it is at (83-rollout-check.sh).
km_node_at() {
  local version=$1 marker=$2 rollout=$3 owed
  systemctl enable --quiet kubelet
  for owed in kubelet-restarted kubeadm-upgrade-node; do
    km_is_installed "$owed" "$version" || km_mark_installed "$owed" "$version"
  done
  km_put_file "$marker" 0644 "$rollout"
}
