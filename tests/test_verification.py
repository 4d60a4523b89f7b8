"""The proof: its verdicts on recorded kubectl/crictl/curl outputs, its scripts run against those
recordings, and its place in every stack under the mock engine."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
from harness import (
    KATA_GUEST_KERNEL,
    PROJECT,
    SAMPLES,
    STACKS,
    assert_connects_to,
    cached_run,
    command_args,
    node_vms,
    require_tool,
    run_program,
    sample,
    sample_evidence,
    sample_facts,
)

from components.node_provisioning import NodeStep, with_secret_args
from components.verification import containers_ready, process_counts, verify

NODE = "kata-mesh-dev-worker-0"
COMMAND = "command:remote:Command"


def problems_of(report) -> str:
    return "\n".join(report.problems)


# --- Verdicts on recorded samples --------------------------------------------------------------


NAMESPACES = {"httpbin": "httpbin", "httpbin-runc": "httpbin-runc"}


def test_a_kata_pod_with_its_sidecar_answering_over_mtls_passes_and_is_measured_beside_runc():
    report = verify(
        sample_facts(NODE), [sample_evidence(NODE)], "httpbin", "httpbin-runc", namespaces=NAMESPACES
    )
    assert report.passed, report.problems
    kata, runc = report.details["kata"], report.details["runc"]
    assert (kata["namespace"], runc["namespace"]) == ("httpbin", "httpbin-runc")
    assert kata["runtimeHandler"] == "kata"
    assert kata["ready"] == "2/2" and kata["sidecar"] is True
    assert (kata["podKernel"], kata["nodeKernel"]) == (KATA_GUEST_KERNEL, "6.8.0-1017-gcp")
    # The app's VM and the in-mesh client's (a Kata pod too: its namespace admits nothing else).
    assert kata["processes"]["containerd-shim-kata-v2"] == kata["processes"]["qemu-system-x86_64"] == 2
    assert (kata["startupSeconds"], runc["startupSeconds"]) == (30.0, 8.0)
    assert report.details["kataCostBesideRunc"] == {"startupSeconds": 22.0, "memoryBytes": 374_000_000}
    assert runc["runtimeHandler"] == ""
    assert report.details["request"] == {"status": 200, "mutualTls": True}


def test_each_app_is_looked_for_in_its_own_namespace():
    """The runc twin lives beside the app's sandbox namespace: a pod of it anywhere else (as
    before the sandbox policy, in the app's namespace) is not the one judged."""
    facts = sample_facts(NODE)
    for pod in facts["pods"]["items"]:
        pod["metadata"]["namespace"] = "httpbin"
    report = verify(facts, [sample_evidence(NODE)], "httpbin", "httpbin-runc", namespaces=NAMESPACES)
    assert report.problems == ["no httpbin-runc pod found in namespace httpbin-runc"]
    assert report.details["runc"] is None and report.details["kata"]["namespace"] == "httpbin"
    # Without namespaces, every namespace is looked in (as the HA tests call it).
    assert verify(facts, [sample_evidence(NODE)], "httpbin", "httpbin-runc").passed


def test_a_pod_that_runs_under_runc_fails():
    facts = sample_facts(NODE)
    for pod in facts["pods"]["items"]:
        pod["spec"].pop("runtimeClassName", None)
    facts["podKernels"] = dict.fromkeys(facts["podKernels"], "6.8.0-1017-gcp")
    evidence = sample_evidence(NODE, processes="ps-args-no-kata.txt")
    kata_sandbox = evidence["pods"]["items"][0]
    kata_sandbox["runtimeHandler"] = ""
    evidence["inspect"][kata_sandbox["id"]] = sample("crictl-inspectp-runc.json")
    report = verify(facts, [evidence], "httpbin", None)
    assert not report.passed
    found = problems_of(report)
    assert "runs under runtime handler '', not 'kata'" in found
    assert "kernel (6.8.0-1017-gcp) is not its own" in found
    assert f"no containerd-shim-kata-v2 process on {NODE}" in found
    assert f"no qemu-system-x86_64 process on {NODE}" in found


@pytest.mark.parametrize("handler", ["runc", ""])
def test_a_sandbox_that_crictl_reports_under_runc_or_no_handler_fails_even_if_all_else_looks_kata(handler):
    """What a non-Kata pod really shows in `crictl inspectp`: handler runc, or an empty handler
    (containerd's default runtime); the kernel and processes alone must not pass it."""
    evidence = sample_evidence(NODE)
    kata_sandbox = evidence["pods"]["items"][0]
    kata_sandbox["runtimeHandler"] = handler
    inspected = json.loads(json.dumps(evidence["inspect"][kata_sandbox["id"]]))
    inspected["status"]["runtimeHandler"] = handler
    evidence["inspect"][kata_sandbox["id"]] = inspected
    report = verify(sample_facts(NODE), [evidence], "httpbin", None)
    assert not report.passed
    assert f"runs under runtime handler {handler!r}, not 'kata'" in problems_of(report)
    assert report.details["kata"]["runtimeHandler"] == handler


def test_a_pod_without_its_sidecar_fails():
    facts = sample_facts(NODE, pods="kubectl-get-pods-no-sidecar.json")
    report = verify(facts, [sample_evidence(NODE)], "httpbin", None)
    found = problems_of(report)
    assert "has no istio-proxy sidecar" in found
    assert "is 1/1 ready, not 2/2" in found


def test_a_failed_request_fails():
    report = verify(sample_facts(NODE, curl="curl-get-failed.txt"), [sample_evidence(NODE)], "httpbin", None)
    assert problems_of(report) == "the in-mesh request to httpbin answered 503, not 200"
    assert report.details["request"] == {"status": 503, "mutualTls": False}


def test_a_request_without_mutual_tls_fails():
    report = verify(
        sample_facts(NODE, curl="curl-get-plaintext.txt"), [sample_evidence(NODE)], "httpbin", None
    )
    assert "without mutual TLS" in problems_of(report)


def test_a_missing_pod_or_node_evidence_fails_clearly():
    assert "no httpbin pod found" in problems_of(verify({"pods": {"items": []}}, [], "httpbin", None))
    report = verify(sample_facts(NODE), [sample_evidence("another-node")], "httpbin", None)
    assert f"no runtime evidence from node {NODE}" in problems_of(report)


def test_ready_counts_native_sidecars_like_kubectl_does():
    pods = sample("kubectl-get-pods.json")["items"]
    assert containers_ready(pods[0]) == (2, 2, True)
    assert process_counts("/opt/kata/bin/qemu-system-x86_64 -name x\n/usr/local/bin/containerd\n") == {
        "containerd-shim-kata-v2": 0,
        "qemu-system-x86_64": 1,
        "virtiofsd": 0,
        "containerd-shim-runc-v2": 0,
    }


# --- The scripts, run against the recordings ---------------------------------------------------


def fake_tools(tmp_path: Path, tools: dict[str, str]) -> dict[str, str]:
    """Puts replaying stand-ins for the cluster's CLIs first on PATH; jq, bash, coreutils stay real."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in tools.items():
        tool = bin_dir / name
        tool.write_text(f"#!/usr/bin/env bash\n{body}\n")
        tool.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SAMPLES": str(SAMPLES)}


def run_script(
    script: str, args: tuple[tuple[str, str], ...], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    step = NodeStep(script, script, args)
    command = step.command_line.removeprefix("sudo -n ")
    return subprocess.run(
        ["bash", "-c", command], input=step.script_text, capture_output=True, text=True, env=env
    )


@pytest.fixture
def jq() -> None:
    require_tool("jq")


def crictl_pods_with_others(tmp_path: Path) -> Path:
    """crictl's answer on a node that also runs pods of other namespaces: Flannel's, and one whose
    name begins with the app's."""
    listing = sample("crictl-pods.json")
    for name, namespace in (("kube-flannel-ds-x7k2p", "kube-flannel"), ("other-0", "httpbin-other")):
        other = json.loads(json.dumps(listing["items"][1]))
        other["id"] = f"{name}-sandbox"
        other["metadata"].update(name=name, namespace=namespace, uid=f"uid-{name}")
        listing["items"].append(other)
    path = tmp_path / "crictl-pods-all.json"
    path.write_text(json.dumps(listing))
    return path


def test_the_evidence_script_turns_crictl_and_ps_output_into_what_the_verdict_reads(tmp_path, jq):
    pods = sample("crictl-pods.json")["items"]
    env = fake_tools(
        tmp_path,
        {
            "crictl": f"""case "$1 $*" in
  # Only the sandboxes that are ready: crictl lists stopped ones too otherwise.
  "pods pods --state ready -o json") cat {crictl_pods_with_others(tmp_path)} ;;
  *{pods[0]["id"]}*) cat "$SAMPLES/crictl-inspectp-kata.json" ;;
  *{pods[1]["id"]}*) cat "$SAMPLES/crictl-inspectp-runc.json" ;;
  *{pods[2]["id"]}*) cat "$SAMPLES/crictl-inspectp-client.json" ;;
  *) echo "unexpected: crictl $*" >&2; exit 1 ;;
esac""",
            "ps": 'cat "$SAMPLES/ps-args-worker.txt"',
            "hostname": f"echo {NODE}",
            "uname": "echo 6.8.0-1017-gcp",
        },
    )
    cgroups = tmp_path / "kubepods.slice" / "kubepods-burstable.slice"
    kata_uid = pods[0]["metadata"]["uid"]
    pod_cgroup = cgroups / f"kubepods-burstable-pod{kata_uid.replace('-', '_')}.slice"
    pod_cgroup.mkdir(parents=True)
    (pod_cgroup / "memory.current").write_text("412000000\n")

    result = run_script(
        "95-kata-evidence.sh",
        (("namespaces", "httpbin httpbin-runc"), ("cgroup-root", str(tmp_path / "kubepods.slice"))),
        env,
    )
    assert result.returncode == 0, result.stderr
    evidence = json.loads(result.stdout)
    assert evidence["node"] == NODE
    assert evidence["memory"] == {kata_uid: 412000000}
    # The apps' namespaces, each compared whole: not Flannel's, nor httpbin-other.
    assert sorted(evidence["inspect"]) == sorted(p["id"] for p in pods)
    assert [p["metadata"]["namespace"] for p in evidence["pods"]["items"]] == [
        "httpbin",
        "httpbin-runc",
        "httpbin",
    ]
    assert evidence["inspect"][pods[0]["id"]]["status"]["runtimeHandler"] == "kata"
    report = verify(sample_facts(NODE), [evidence], "httpbin", "httpbin-runc", namespaces=NAMESPACES)
    assert report.passed, report.problems
    assert report.details["runc"]["runtimeHandler"] == ""


# The plaintext client as the API server returns it: the mesh client's recording, without the
# sidecar, the Kata RuntimeClass and the app's namespace.
PLAINTEXT_CLIENT_JSON = (
    """jq '.items[] | select(.metadata.name == "mesh-client")"""
    """ | .metadata.name = "plaintext-client" | .metadata.namespace = "default" """
    """ | .metadata.labels.app = "plaintext-client" | del(.spec.initContainers, .spec.runtimeClassName)"""
    """ | .spec.containers[0].name = "plaintext-client"' "$SAMPLES/kubectl-get-pods.json" """
)


# The token kubectl mints with admin.conf for the proof's ServiceAccount (a JWT's alphabet).
PROOF_TOKEN = "eyJhbGciOiJSUzI1NiIsImtpZCI6InN0YW5kLWluIn0.eyJzdWIiOiJrYXRhLW1lc2gtcHJvb2YifQ.c3RhbmQtaW4"
# The first lines of every kubectl stand-in of 96-mesh-facts.sh: with admin.conf, only what
# km_service_account_kubeconfig asks (the cluster's entry, a token for kube-system/kata-mesh-proof);
# every other call must come with the kubeconfig holding that token.
PROOF_KUBECONFIG_GUARD = f"""if [[ "${{1:-}} ${{2:-}}" == "--kubeconfig /etc/kubernetes/admin.conf" ]]; then
  [[ $* == *" config view --minify --raw -o jsonpath="* ]] && {{ printf 'https://10.10.0.2:6443\\nQ0EK'; exit 0; }}
  [[ $* == *" -n kube-system create token kata-mesh-proof --duration="* ]] && {{ echo {PROOF_TOKEN}; exit 0; }}
  echo "kubectl stand-in: unexpected call with admin.conf: kubectl $*" >&2; exit 1
fi
grep -qF '"token": "{PROOF_TOKEN}"' "${{KUBECONFIG:-/nonexistent}}" 2>/dev/null ||
  {{ echo "kubectl stand-in: not run with the proof's kubeconfig: kubectl $*" >&2; exit 1; }}
"""


def fake_kubectl(
    curl_sample: str,
    runc: str = "kubectl-run-runc-probe-denied.txt",
    metadata: str = "curl-probe-timeout.txt",
    plaintext: str = "curl-probe-reset.txt",
) -> str:
    """Replays the recordings; every call is logged to $KUBECTL_LOG. Each namespace's pods are the
    recorded ones of that namespace. The hardening's attempts answer with the recordings named:
    kubectl's words for the runc pod's dry run (exit 0 only for the one admitted), and what the
    probe's shell printed in the mesh client (the metadata server) and the plaintext client."""
    runc_exit = 0 if "admitted" in runc else 1
    return f"""echo "$*" >>"$KUBECTL_LOG"
{PROOF_KUBECONFIG_GUARD}namespace_pods() {{ jq --arg ns "$1" '.items |= map(select(.metadata.namespace == $ns))' "$SAMPLES/kubectl-get-pods.json"; }}
case "$*" in
  *"rollout status"* | *"delete pod mesh-client"* | *"run mesh-client"*) ;;
  *"wait --for=condition=Ready pod/mesh-client"*) ;;
  *"get pod mesh-client -o json"*) jq '.items[] | select(.metadata.name == "mesh-client")' "$SAMPLES/kubectl-get-pods.json" ;;
  *"run runc-probe"*) cat "$SAMPLES/{runc}"; exit {runc_exit} ;;
  *"exec mesh-client"*" getent hosts "*) printf '169.254.169.254 metadata.google.internal\n' ;;
  *"exec mesh-client"*"/computeMetadata/"*) cat "$SAMPLES/{metadata}" ;;
  *"delete pod plaintext-client"* | *"run plaintext-client"* | *"wait --for=condition=Ready pod/plaintext-client"*) ;;
  *"get pod plaintext-client -o json"*) {PLAINTEXT_CLIENT_JSON} ;;
  *"exec plaintext-client"*) cat "$SAMPLES/{plaintext}" ;;
  *"exec mesh-client"*) cat "$SAMPLES/{curl_sample}" ;;
  *"get pods -l app=httpbin -o json"*) namespace_pods httpbin ;;
  *"-n httpbin-runc get pods -l app=httpbin-runc -o json"*) namespace_pods httpbin-runc ;;
  *"exec httpbin-6b8f7c9d4-x2x7k"*) echo {KATA_GUEST_KERNEL} ;;
  *"-n httpbin-runc exec httpbin-runc-5d9c8b7f6-q9w8e"*) echo 6.8.0-1017-gcp ;;
  "-n httpbin get pods -o json") namespace_pods httpbin ;;
  "-n httpbin-runc get pods -o json") namespace_pods httpbin-runc ;;
  *"get nodes -o json"*) cat "$SAMPLES/kubectl-get-nodes.json" ;;
  *) echo "unexpected: kubectl $*" >&2; exit 1 ;;
esac"""


FACTS_ARGS = (
    ("namespace", "httpbin"),
    ("apps", "httpbin/httpbin"),
    ("client-image", "docker.io/curlimages/curl:8.11.1"),
    ("client-runtime-class", "kata-runtime"),
    ("url", "http://httpbin.httpbin:8000/get"),
    ("timeout-seconds", "5"),
    ("metadata-url", "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token"),
    ("metadata-host", "metadata.google.internal"),
    ("outside-namespace", "default"),
    ("proof-service-account", "kata-mesh-proof"),
    ("proof-service-account-namespace", "kube-system"),
)
WITH_TWIN = tuple(
    (key, "httpbin/httpbin httpbin-runc/httpbin-runc" if key == "apps" else value)
    for key, value in FACTS_ARGS
)


def run_facts_with(
    tmp_path: Path, kubectl: str, args: tuple[tuple[str, str], ...] = FACTS_ARGS
) -> subprocess.CompletedProcess[str]:
    """96-mesh-facts.sh for httpbin, against a kubectl stand-in."""
    env = fake_tools(tmp_path, {"kubectl": kubectl})
    env["KUBECTL_LOG"] = str(tmp_path / "kubectl.log")
    return run_script("96-mesh-facts.sh", args, env)


def kubectl_calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "kubectl.log").read_text().splitlines()


def run_facts_script(tmp_path: Path, curl_sample: str) -> subprocess.CompletedProcess[str]:
    return run_facts_with(tmp_path, fake_kubectl(curl_sample))


@pytest.mark.parametrize(
    ("curl_sample", "passes"), [("curl-get-mtls.txt", True), ("curl-get-plaintext.txt", False)]
)
def test_the_facts_script_turns_kubectl_and_curl_output_into_what_the_verdict_reads(
    tmp_path, jq, curl_sample, passes
):
    result = run_facts_script(tmp_path, curl_sample)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["podKernels"] == {"httpbin-6b8f7c9d4-x2x7k": KATA_GUEST_KERNEL}
    assert facts["request"]["status"] == "200"
    report = verify(facts, [sample_evidence(NODE)], "httpbin", None, namespaces=NAMESPACES)
    assert report.passed is passes, report.problems


def test_the_facts_script_judges_the_runc_twin_in_its_own_namespace(tmp_path, jq):
    result = run_facts_with(tmp_path, fake_kubectl("curl-get-mtls.txt"), WITH_TWIN)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["podKernels"] == {
        "httpbin-6b8f7c9d4-x2x7k": KATA_GUEST_KERNEL,
        "httpbin-runc-5d9c8b7f6-q9w8e": "6.8.0-1017-gcp",
    }
    # Both namespaces' pods, each once.
    assert sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in facts["pods"]["items"]) == [
        ("httpbin", "httpbin-6b8f7c9d4-x2x7k"),
        ("httpbin", "mesh-client"),
        ("httpbin-runc", "httpbin-runc-5d9c8b7f6-q9w8e"),
    ]
    calls = kubectl_calls(tmp_path)
    assert "-n httpbin rollout status deployment/httpbin --timeout=5s" in calls
    assert "-n httpbin-runc rollout status deployment/httpbin-runc --timeout=5s" in calls
    report = verify(facts, [sample_evidence(NODE)], "httpbin", "httpbin-runc", namespaces=NAMESPACES)
    assert report.passed, report.problems
    assert report.details["runc"]["podKernel"] == "6.8.0-1017-gcp"


def test_the_mesh_client_runs_in_a_kata_vm_and_asks_for_its_sidecar(tmp_path, jq):
    """The app's namespace is a sandbox: its admission policy refuses a client under runc."""
    result = run_facts_script(tmp_path, "curl-get-mtls.txt")
    assert result.returncode == 0, result.stderr
    [run] = [c for c in kubectl_calls(tmp_path) if " run mesh-client " in c]
    assert run.startswith(
        "-n httpbin run mesh-client --image=docker.io/curlimages/curl:8.11.1 --restart=Never "
    )
    assert "--labels=app=mesh-client,sidecar.istio.io/inject=true" in run
    overrides = json.loads(run.split("--overrides=", 1)[1].split(" --command", 1)[0])
    assert overrides == {"apiVersion": "v1", "spec": {"runtimeClassName": "kata-runtime"}}
    assert run.endswith("--command -- sleep 3600")


CLIENT_FAILURES = {
    "no-sidecar": (
        (
            """jq '.items[] | select(.metadata.name == "mesh-client")'""",
            """jq '.items[] | select(.metadata.name == "mesh-client") | .spec.initContainers = []'""",
        ),
        [
            "ERROR: the mesh client has no istio-proxy sidecar (its containers: mesh-client): "
            "is istiod's injection webhook up?"
        ],
    ),
    "refused": (
        (
            '*"rollout status"* | *"delete pod mesh-client"* | *"run mesh-client"*) ;;',
            '*"rollout status"* | *"delete pod mesh-client"*) ;;\n'
            '  *"run mesh-client"*) echo "Error from server (Forbidden): pods \\"mesh-client\\" is forbidden" >&2; exit 1 ;;',
        ),
        [
            'pods "mesh-client" is forbidden',
            "ERROR: could not create the mesh client pod in httpbin (kubectl's error above; "
            "refused by an admission policy?)",
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(CLIENT_FAILURES))
def test_a_mesh_client_without_its_sidecar_or_refused_fails_the_step_saying_so(tmp_path, jq, case):
    (old, new), messages = CLIENT_FAILURES[case]
    kubectl = fake_kubectl("curl-get-mtls.txt")
    assert old in kubectl
    result = run_facts_with(tmp_path, kubectl.replace(old, new))
    assert result.returncode == 1
    for message in messages:
        assert message in result.stderr
    assert result.stdout == ""


def test_the_facts_script_refuses_an_app_without_its_namespace(tmp_path, jq):
    args = tuple((k, "httpbin" if k == "apps" else v) for k, v in FACTS_ARGS)
    result = run_facts_with(tmp_path, fake_kubectl("curl-get-mtls.txt"), args)
    assert result.returncode == 1
    assert "ERROR: --apps takes <namespace>/<deployment> entries, got: httpbin" in result.stderr


def test_a_failed_request_fails_the_facts_step_itself_so_a_retry_gathers_again(tmp_path, jq):
    result = run_facts_script(tmp_path, "curl-get-failed.txt")
    assert result.returncode == 1
    assert (
        "the in-mesh request to http://httpbin.httpbin:8000/get answered 503: upstream connect error"
        in result.stderr
    )
    assert result.stdout == ""


def fake_kubectl_failing(case: str) -> str:
    return f"""{PROOF_KUBECONFIG_GUARD}case "$*" in
  *"rollout status"*) {"exit 1" if case == "rollout" else ":"} ;;
  *"delete pod mesh-client"* | *"run mesh-client"*) ;;
  *"wait --for=condition=Ready pod/mesh-client"*) {"exit 1" if case == "client" else ":"} ;;
  *"get pod mesh-client -o json"*) jq '.items[] | select(.metadata.name == "mesh-client")' "$SAMPLES/kubectl-get-pods.json" ;;
  *"get pods -o wide"*) echo "httpbin-6b8f7c9d4-x2x7k 1/2 Running" ;;
  *"describe pod mesh-client"*) echo "Warning  Failed  ErrImagePull" ;;
  *) echo "unexpected: kubectl $*" >&2; exit 1 ;;
esac"""


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "rollout",
            "deployment httpbin (namespace httpbin) did not roll out within 5s: httpbin-6b8f7c9d4-x2x7k 1/2 Running",
        ),
        ("client", "the mesh client pod is not Ready: Warning  Failed  ErrImagePull"),
    ],
)
def test_the_facts_step_fails_itself_when_the_app_or_its_client_never_get_ready(tmp_path, jq, case, message):
    result = run_facts_with(tmp_path, fake_kubectl_failing(case))
    assert result.returncode == 1
    assert f"ERROR: {message}" in result.stderr
    assert result.stdout == ""


def test_the_facts_step_reads_the_kernel_of_the_newest_app_pod_after_a_rollout(tmp_path, jq):
    """During a rollout the old pod may linger: the kernel comes from the newest one."""
    pods = sample("kubectl-get-pods.json")
    kata = next(p for p in pods["items"] if p["metadata"]["name"] == "httpbin-6b8f7c9d4-x2x7k")
    old = json.loads(json.dumps(kata))
    old["metadata"]["name"] = "httpbin-5d9c8b7a6-oldpd"
    old["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    kata["metadata"]["creationTimestamp"] = "2026-12-01T00:00:00Z"
    (tmp_path / "two-pods.json").write_text(json.dumps({"items": [kata, old]}))
    fake = fake_kubectl("curl-get-mtls.txt").replace(
        '*"get pods -l app=httpbin -o json"*) namespace_pods httpbin ;;',
        f'*"get pods -l app=httpbin -o json"*) cat {tmp_path / "two-pods.json"} ;;\n'
        '  *"exec httpbin-5d9c8b7a6-oldpd"*) echo 6.8.0-1017-gcp ;;',
    )
    result = run_facts_with(tmp_path, fake)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["podKernels"] == {"httpbin-6b8f7c9d4-x2x7k": KATA_GUEST_KERNEL}


@pytest.mark.parametrize("passed", [True, False])
def test_the_verdict_script_prints_the_report_and_fails_the_deploy_unless_it_passed(passed):
    report = json.dumps({"passed": passed, "problems": [] if passed else ["x"]})
    args = (("report-b64", base64.b64encode(report.encode()).decode()), ("passed", str(passed).lower()))
    result = run_script("97-verdict.sh", args, dict(os.environ))
    assert result.stdout.strip() == report
    assert result.returncode == (0 if passed else 1)
    if not passed:
        assert "verification failed" in result.stderr


def test_secret_arguments_sent_on_stdin_reach_the_script():
    report = json.dumps({"passed": True})
    step = NodeStep("verdict", "97-verdict.sh", ())
    secret = (("report-b64", base64.b64encode(report.encode()).decode()), ("passed", "true"))
    result = subprocess.run(
        ["bash", "-c", step.command_line.removeprefix("sudo -n ")],
        input=with_secret_args(step.script_text, secret),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == report


# --- Under the mock engine ---------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_ends_with_the_proof_after_the_app(stack):
    program = cached_run(stack)
    facts = program.one(COMMAND, "proof-mesh-facts")
    deployment = program.one("kubernetes:apps/v1:Deployment", "httpbin-deployment")
    assert deployment.urn in facts.dependencies
    gate = program.one(COMMAND, "proof-verdict")
    nodes = [r.inputs["name"] for r in node_vms(program)]
    for node in nodes:
        evidence = program.one(COMMAND, f"{node}-kata-evidence")
        assert facts.urn in evidence.dependencies
        assert evidence.urn in gate.dependencies
        assert_connects_to(program, evidence.inputs["connection"]["value"], node)
    args = command_args(gate.inputs["create"])
    assert args["--passed"] == "true"
    assert json.loads(base64.b64decode(args["--report-b64"])) == program.output("verification")
    assert program.output("verification")["passed"] is True


@pytest.mark.parametrize("stack", STACKS)
def test_the_proof_looks_for_each_app_in_its_namespace_and_runs_its_client_in_kata(stack):
    program = cached_run(stack)
    twin = stack == "dev"
    facts = command_args(program.one(COMMAND, "proof-mesh-facts").inputs["create"])
    assert facts["--namespace"] == "httpbin"
    assert facts["--apps"] == "httpbin/httpbin" + (" httpbin-runc/httpbin-runc" if twin else "")
    assert facts["--client-runtime-class"] == "kata-runtime"
    for vm in node_vms(program):
        evidence = command_args(program.one(COMMAND, f"{vm.inputs['name']}-kata-evidence").inputs["create"])
        assert evidence["--namespaces"] == "httpbin" + (" httpbin-runc" if twin else "")
    report = program.output("verification")
    assert report["kata"]["namespace"] == "httpbin"
    assert (report["runc"] or {}).get("namespace") == ("httpbin-runc" if twin else None)
    # The twin's namespace is one the app declares.
    namespaces = {r.inputs["metadata"]["name"] for r in program.of_type("kubernetes:core/v1:Namespace")}
    assert ("httpbin-runc" in namespaces) is twin


def triggers(program, name: str) -> list:
    return program.one(COMMAND, name).inputs["triggers"]


# Four more runs of dev: with the system tests, to keep the plain run short.
@pytest.mark.system
def test_the_proof_runs_again_when_the_app_changes_or_when_asked_and_not_otherwise():
    names = ["proof-mesh-facts", "kata-mesh-dev-cp-0-kata-evidence", "proof-verdict"]
    base = run_program("dev", preview=False)
    same = run_program("dev", preview=False)
    image = run_program(
        "dev", preview=False, overrides={f"{PROJECT}:httpbinImage": "docker.io/mccutchen/go-httpbin:v2.15.0"}
    )
    asked = run_program("dev", preview=False, overrides={f"{PROJECT}:verificationRun": "1764104531"})
    # What the nodes run changes (every step's arguments name the mirror): the proof vouched for
    # the old runtime.
    mirror = run_program(
        "dev",
        preview=False,
        overrides={f"{PROJECT}:artifactMirrorUrl": "https://storage.googleapis.com/b/km"},
    )
    for name in names:
        assert triggers(base, name) == triggers(same, name)
        assert triggers(base, name) != triggers(image, name)
        assert triggers(base, name) != triggers(asked, name)
        assert triggers(base, name) != triggers(mirror, name)
