#!/usr/bin/env bash
# One node, with 3 or more control planes: asks the API server's /readyz through the control-plane
# endpoint (the load balancer's address) and prints the answer as one JSON document on stdout.
# curl trusts only the cluster's CA (every joined node has it), so an answer also proves that the
# endpoint's address is in the API server certificate. A control plane asking its own load
# balancer's address is answered by itself, so the program asks from a worker when there is one
# and says which (--through-load-balancer). It asks again until /readyz answers 200, --attempts
# times at most, 5 seconds apart; a failure is reported in the document (the program judges it).
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_endpoint=""
arg_ca_cert=""
arg_through_load_balancer=""
arg_attempts=""
km_parse_args "$@"
km_require_args endpoint ca_cert through_load_balancer attempts
[[ $arg_through_load_balancer == true || $arg_through_load_balancer == false ]] ||
  km_die "--through-load-balancer must be true or false"
[[ $arg_attempts =~ ^[1-9][0-9]*$ ]] || km_die "--attempts must be a positive number, got: $arg_attempts"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
url="https://$arg_endpoint/readyz"

for ((attempt = 1; ; attempt++)); do
  code=0
  : >"$work/body"
  status=$(curl -sS --cacert "$arg_ca_cert" --connect-timeout 5 --max-time 10 \
    -o "$work/body" -w '%{http_code}' "$url" 2>"$work/error") || code=$?
  [[ $code == 0 && $status == 200 ]] && break
  if ((attempt >= arg_attempts)); then
    km_log "$url did not answer 200 after $attempt attempts"
    break
  fi
  km_log "$url: ${status:-000} (curl exit $code), asking again (attempt $attempt of $arg_attempts)"
  sleep 5
done

# curl's own line ("curl: (60) SSL certificate problem: ..."), not the advice it prints after it.
error=$(grep -m 1 '^curl: (' "$work/error" || head -n 1 "$work/error")
jq -n \
  --arg endpoint "$arg_endpoint" \
  --arg url "$url" \
  --arg status "${status:-000}" \
  --rawfile body "$work/body" \
  --argjson curlExit "$code" \
  --arg error "$error" \
  --arg from "$(hostname)" \
  --argjson throughLoadBalancer "$arg_through_load_balancer" \
  --argjson attempts "$attempt" \
  '{endpoint: $endpoint, url: $url, status: ($status | tonumber), body: $body, curlExit: $curlExit,
    error: $error, from: $from, throughLoadBalancer: $throughLoadBalancer, attempts: $attempts}'
