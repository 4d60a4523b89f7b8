#!/usr/bin/env bash
# How the etcd samples in this folder were made: real etcd members (Debian bookworm's etcd-server
# and etcd-client 3.4.23, `apt-get install -y etcd-server etcd-client`) on loopback addresses
# 127.0.0.1-127.0.0.5 (client port 2379, peer port 2380, plain http), named as a stack's control
# planes are, and the real etcdctl's output of what 94-ha-facts.sh asks (`member list -w simple`,
# `endpoint health --cluster -w json`), with its exit status and stderr. Run as root to redo them:
#   bash tests/samples/etcd/capture.sh
# Each NAME.txt/NAME.json has NAME.exit (etcdctl's exit status) and NAME.stderr beside it.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

run=0
name() { echo "kata-mesh-dev-cp-$1"; }
ip() { echo "127.0.0.$(($1 + 1))"; }

# start_cluster N: N members, all started together (a new cluster); sets endpoints.
start_cluster() {
  local count=$1 i initial=""
  for ((i = 0; i < count; i++)); do
    initial+="${initial:+,}$(name "$i")=http://$(ip "$i"):2380"
  done
  pids=()
  run=$((run + 1))
  for ((i = 0; i < count; i++)); do
    etcd --name "$(name "$i")" --data-dir "$work/run$run-$i" \
      --listen-client-urls "http://$(ip "$i"):2379" --advertise-client-urls "http://$(ip "$i"):2379" \
      --listen-peer-urls "http://$(ip "$i"):2380" --initial-advertise-peer-urls "http://$(ip "$i"):2380" \
      --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token "capture-$count" \
      >"$work/etcd-run$run-$i.log" 2>&1 &
    pids+=($!)
  done
  # Healthy, every member's client URL published, and connected long enough (etcd refuses
  # membership changes until its members have been connected for 5 seconds).
  until etcdctl --endpoints="http://$(ip 0):2379" endpoint health --cluster >/dev/null 2>&1 &&
    ! etcdctl --endpoints="http://$(ip 0):2379" member list -w simple | grep -q ', , '; do
    sleep 0.5
  done
  sleep 6
}

stop_cluster() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

# capture NAME ENDPOINT ARGS...: etcdctl ARGS against ENDPOINT (as km_etcdctl asks the local member).
capture() {
  local out=$1 endpoint=$2 code=0
  shift 2
  etcdctl --endpoints="$endpoint" --command-timeout=3s "$@" >"$here/$out" 2>"$here/${out%.*}.stderr" || code=$?
  echo "$code" >"$here/${out%.*}.exit"
}

local0="http://$(ip 0):2379"

start_cluster 3
capture member-list-3.txt "$local0" member list -w simple
capture endpoint-health-3.json "$local0" endpoint health --cluster -w json
# A member added but never started (a control plane whose join stopped half-way): no name, no
# client URL, so `endpoint health --cluster` does not ask it. Then removed again.
capture member-add-unstarted.txt "$local0" member add "$(name 3)" --peer-urls="http://$(ip 3):2380"
capture member-list-3-plus-unstarted.txt "$local0" member list -w simple
capture endpoint-health-3-plus-unstarted.json "$local0" endpoint health --cluster -w json
unstarted=$(awk -F', ' '$2 == "unstarted" {print $1}' "$here/member-list-3-plus-unstarted.txt")
etcdctl --endpoints="$local0" member remove "$unstarted" >/dev/null
# One member down (cp-2's etcd killed): the others still list it; its health check fails.
kill "${pids[2]}"
wait "${pids[2]}" 2>/dev/null || true
sleep 1
capture member-list-3-one-stopped.txt "$local0" member list -w simple
capture endpoint-health-3-one-stopped.json "$local0" endpoint health --cluster -w json
# Asked of the member that is down (what cp-2 sees when its own etcd is not answering).
capture member-list-local-down.txt "http://$(ip 2):2379" member list -w simple
capture endpoint-health-local-down.json "http://$(ip 2):2379" endpoint health --cluster -w json
stop_cluster

# A learner (kubeadm joins a control plane's etcd as a learner, then promotes it).
start_cluster 3
capture member-add-learner.txt "$local0" member add "$(name 3)" --learner --peer-urls="http://$(ip 3):2380"
capture member-list-3-plus-learner.txt "$local0" member list -w simple
stop_cluster

start_cluster 5
capture member-list-5.txt "$local0" member list -w simple
capture endpoint-health-5.json "$local0" endpoint health --cluster -w json
stop_cluster

# Keep only what tells something: drop empty stderr and output files.
find "$here" \( -name '*.stderr' -o -name '*.txt' -o -name '*.json' \) -empty -delete
