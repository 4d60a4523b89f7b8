"""The proof proves the hardening: a runc pod refused in the sandbox namespace (server-side dry
run), no answer from the metadata server to the in-mesh Kata client, a plaintext request from a
pod outside the mesh refused by httpbin. Its verdicts on what real tools printed, the part of
96-mesh-facts.sh that gathers it (with kubectl stand-ins, the real kubectl against a stand-in API
server, and the real curl against stand-in servers on 127.0.0.1), and the report of every stack.

Where the samples (tests/samples/verification) come from:
- curl-probe-*.txt: what the probe's shell (96-mesh-facts.sh's probe_script) printed around the
  real curl 7.88.1 here, against 127.0.0.1: a server that accepts and never answers (timeout:
  what curl sees through a sidecar whose upstream connection is dropped), an nftables drop in a
  network namespace of its own (connect-timeout: what curl sees without a sidecar), a server that
  resets (reset: httpbin's sidecar under STRICT mutual TLS), one that closes (empty-reply), a
  closed port (refused), a name that does not resolve (unresolved), a server answering 200 with a
  token (token) or 403 (forbidden). The exit codes are curl's whatever its version; only no-curl
  is written by hand (dash's words for a missing command).
- kubectl-run-runc-probe-*.txt: kubectl's words for `kubectl run --dry-run=server`. The denial's
  form is the API server's (k8s.io/apiserver, admission/plugin/policy/validating/dispatcher.go:
  "ValidatingAdmissionPolicy '%s' with binding '%s' denied request: %s" inside
  admission.NewForbidden's `pods "<name>" is forbidden: ...`) as kubectl prints a Status
  (kubectl/pkg/cmd/util/helpers.go, StandardErrorMessage: "Error from server (<reason>): ...");
  the test below has the real kubectl print it from a stand-in API server. rbac is the
  authorizer's refusal (responsewriters.Forbidden), pod-security Pod Security admission's.
- hardening-facts.json: what 96-mesh-facts.sh records on the passing recordings (checked below by
  running it; KATA_MESH_UPDATE_SAMPLES=1 writes it again). The mock engine replays it.
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import shutil
import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest
from harness import (
    ROOT,
    SAMPLES,
    STACKS,
    cached_run,
    command_args,
    require_tool,
    sample,
    sample_evidence,
    sample_facts,
    unavailable,
)
from test_admission import (
    Request,
    admit,
    binding_of,
    injected,
    namespace_labels,
    pod_security_violations,
    policy_of,
)
from test_verification import FACTS_ARGS, fake_kubectl, kubectl_calls, run_facts_with

from components.proof import METADATA_HOST, METADATA_TOKEN_URL, OUTSIDE_NAMESPACE
from components.verification import verify, verify_hardening

NODE = "kata-mesh-dev-worker-0"
COMMAND = "command:remote:Command"
NAMESPACES = {"httpbin": "httpbin"}
HARDENING = "hardening-facts.json"


@pytest.fixture
def jq() -> None:
    require_tool("jq")


def hardening(**parts: Any) -> dict[str, Any]:
    """The recorded hardening facts, with parts changed (a part's keys replaced)."""
    doc = copy.deepcopy(sample(HARDENING))
    for name, changes in parts.items():
        doc[name] = None if changes is None else {**doc[name], **changes}
    return doc


def probe_from(name: str) -> dict[str, Any]:
    """A probe's recording as 96-mesh-facts.sh's probe_json reads it (checked against the script
    below): the status and curl's exit code from their lines, curl's words from the rest."""
    lines = sample(name).splitlines()
    status = [line.removeprefix("http_code=") for line in lines if line.startswith("http_code=")]
    codes = [int(line.removeprefix("curl_exit=")) for line in lines if line.startswith("curl_exit=")]
    said = [line for line in lines if not line.startswith(("http_code=", "curl_exit="))]
    return {
        "status": status[-1] if status else "",
        "curlExit": codes[-1] if codes else None,
        "output": "\n".join(said).rstrip(),
    }


def runc_from(name: str, exit_code: int) -> dict[str, Any]:
    return {"exitCode": exit_code, "output": sample(name).rstrip("\n")}


def facts_of(result) -> dict[str, Any]:
    return json.loads(result.stdout)


def judged(doc: dict[str, Any]):
    report = verify_hardening(doc, "httpbin", NODE)
    return report, "\n".join(report.problems)


# --- Verdicts --------------------------------------------------------------------------------------


def test_the_recorded_hardening_passes_and_each_check_is_a_field_of_the_report():
    report = verify(
        sample_facts(NODE),
        [sample_evidence(NODE)],
        "httpbin",
        None,
        namespaces=NAMESPACES,
        hardening=sample(HARDENING),
    )
    assert report.passed, report.problems
    found = report.as_dict()["hardening"]
    denial = sample("kubectl-run-runc-probe-denied.txt").splitlines()[-1]
    assert found["runcRefused"] == {
        "refused": True,
        "namespace": "httpbin",
        "exitCode": 1,
        # Pod Security's warning (the sandbox only warns) is left out of kubectl's words.
        "message": denial,
    }
    assert found["metadataBlocked"] == {
        "blocked": True,
        "from": "httpbin/mesh-client",
        # Where the in-mesh client ran: the node whose block answered for it.
        "node": NODE,
        "url": METADATA_TOKEN_URL,
        "status": None,
        "curlExit": 28,
        "detail": "curl: (28) Operation timed out after 5000 milliseconds with 0 bytes received",
        "dns": "169.254.169.254 metadata.google.internal",
    }
    assert found["plaintextRefused"] == {
        "refused": True,
        "from": "default/plaintext-client",
        "url": "http://httpbin.httpbin:8000/get",
        "sidecar": False,
        "status": None,
        "curlExit": 56,
        "detail": "curl: (56) Recv failure: Connection reset by peer",
    }


def test_the_denial_sample_is_what_the_declared_policy_says_to_a_runc_pod():
    """The sample's denial carries the policy's own message for a pod without runtimeClassName
    (test_admission evaluates the CEL to the same words)."""
    from components.admission import POLICY_NAME, RUNTIME_MESSAGE

    assert (
        f"ValidatingAdmissionPolicy '{POLICY_NAME}' with binding '{POLICY_NAME}' denied request: "
        in sample("kubectl-run-runc-probe-denied.txt")
    )
    assert f"spec.runtimeClassName is not set; {RUNTIME_MESSAGE}" in sample(
        "kubectl-run-runc-probe-denied.txt"
    )


RUNC_FAILURES = {
    "admitted": (
        runc_from("kubectl-run-runc-probe-admitted.txt", 0),
        "a runc pod (no runtimeClassName) was admitted in sandbox namespace httpbin (server-side dry "
        "run): pod/runc-probe created (server dry run); check that the ValidatingAdmissionPolicy "
        "kata-mesh-sandbox and its binding exist (kubectl get validatingadmissionpolicy,"
        "validatingadmissionpolicybinding kata-mesh-sandbox) and that httpbin is labelled "
        "kata-mesh.io/sandbox=true",
    ),
    "refused-by-rbac": (
        runc_from("kubectl-run-runc-probe-rbac.txt", 1),
        "the runc pod in httpbin was refused (kubectl exit 1), but not by the sandbox policy "
        "kata-mesh-sandbox, so it proves nothing about it: Error from server (Forbidden): pods is "
        'forbidden: User "system:serviceaccount:kube-system:kata-mesh-proof" cannot create resource '
        '"pods" in API group "" in the namespace "httpbin"; check what refused it (the proof\'s '
        "permissions, another admission step, the API server)",
    ),
    "refused-by-pod-security": (
        runc_from("kubectl-run-runc-probe-pod-security.txt", 1),
        "but not by the sandbox policy kata-mesh-sandbox, so it proves nothing about it: Error from "
        'server (Forbidden): pods "runc-probe" is forbidden: violates PodSecurity "baseline:latest"',
    ),
    "refused-by-the-policy-for-another-rule": (
        runc_from("kubectl-run-runc-probe-other-rule.txt", 1),
        "the runc pod in httpbin was refused by kata-mesh-sandbox, but not for its runtime, so the "
        'runtime rule let it through: Error from server (Forbidden): pods "runc-probe" is '
        "forbidden: ValidatingAdmissionPolicy 'kata-mesh-sandbox' with binding 'kata-mesh-sandbox' "
        "denied request: istio-init adds SYS_ADMIN;",
    ),
    "refused-by-another-policy": (
        {
            "exitCode": 1,
            "output": sample("kubectl-run-runc-probe-denied.txt").replace(
                "'kata-mesh-sandbox'", "'someone-elses-policy'"
            ),
        },
        "but not by the sandbox policy kata-mesh-sandbox, so it proves nothing about it",
    ),
    "words-of-a-denial-but-exit-0": (
        runc_from("kubectl-run-runc-probe-denied.txt", 0),
        "a runc pod (no runtimeClassName) was admitted in sandbox namespace httpbin",
    ),
    "kubectl-silent": ({"exitCode": 1, "output": ""}, "(kubectl exit 1), but not by the sandbox policy"),
}


@pytest.mark.parametrize("case", sorted(RUNC_FAILURES))
def test_a_runc_pod_admitted_or_refused_for_another_reason_fails(case):
    changes, expected = RUNC_FAILURES[case]
    report, found = judged(hardening(runcProbe=changes))
    assert len(report.problems) == 1 and expected in found, found
    assert report.details["runcRefused"]["refused"] is False
    assert report.details["runcRefused"]["exitCode"] == changes["exitCode"]
    assert report.details["metadataBlocked"]["blocked"] and report.details["plaintextRefused"]["refused"]


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("curl-probe-timeout.txt", 28),
        ("curl-probe-connect-timeout.txt", 28),
        ("curl-probe-reset.txt", 56),
        ("curl-probe-empty-reply.txt", 52),
        ("curl-probe-refused.txt", 7),
    ],
)
def test_a_metadata_request_that_got_no_answer_at_all_is_blocked(name, code):
    report, found = judged(hardening(metadata=probe_from(name)))
    assert report.passed, found
    assert report.details["metadataBlocked"]["curlExit"] == code
    assert report.details["metadataBlocked"]["status"] is None


METADATA_FAILURES = {
    "answered-200": (
        probe_from("curl-probe-token.txt"),
        200,
        "the metadata server answered HTTP 200 to the in-mesh Kata pod httpbin/mesh-client "
        f"({METADATA_TOKEN_URL}): pods can reach it and take the node's service-account token (a "
        f"blocked request gets no answer at all); check the node's block on node {NODE}: sudo nft "
        "list table inet kata_mesh_metadata; systemctl status kata-mesh-metadata-block.service",
    ),
    # Any answer fails, even one the sidecar made up (Envoy's 503 when its upstream fails).
    "answered-503": (
        {"status": "503", "curlExit": 0, "output": ""},
        503,
        "the metadata server answered HTTP 503 to the in-mesh Kata pod httpbin/mesh-client",
    ),
    "no-curl": (
        probe_from("curl-probe-no-curl.txt"),
        None,
        "the metadata request from httpbin/mesh-client failed with curl exit 127 (probe: 1: curl: "
        "not found), not with no answer (refused, timed out, closed or reset), so it proves nothing",
    ),
    "exec-failed": (
        {
            "status": "",
            "curlExit": None,
            "output": 'Error from server (NotFound): pods "mesh-client" not found',
        },
        None,
        "could not ask the metadata server from httpbin/mesh-client (curl did not run): Error from "
        'server (NotFound): pods "mesh-client" not found',
    ),
    "unresolved": (
        probe_from("curl-probe-unresolved.txt"),
        None,
        "failed with curl exit 6 (curl: (6) Could not resolve host: no-such-host.invalid)",
    ),
}


@pytest.mark.parametrize("case", sorted(METADATA_FAILURES))
def test_a_metadata_request_that_was_answered_or_never_asked_fails(case):
    changes, status, expected = METADATA_FAILURES[case]
    report, found = judged(hardening(metadata=changes))
    assert len(report.problems) == 1 and expected in found, found
    assert report.details["metadataBlocked"]["blocked"] is False
    assert report.details["metadataBlocked"]["status"] == status


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("curl-probe-reset.txt", None, 56),
        ("curl-probe-empty-reply.txt", None, 52),
        ("curl-probe-forbidden.txt", 403, 0),
    ],
)
def test_a_plaintext_request_reset_closed_or_denied_by_the_authorization_policy_is_refused(
    name, status, code
):
    report, found = judged(hardening(plaintext=probe_from(name)))
    assert report.passed, found
    assert (report.details["plaintextRefused"]["status"], report.details["plaintextRefused"]["curlExit"]) == (
        status,
        code,
    )


PLAINTEXT_FAILURES = {
    "answered-200": (
        probe_from("curl-probe-token.txt"),
        "httpbin answered a plaintext request from outside the mesh (default/plaintext-client, no "
        "sidecar) with HTTP 200: its mutual TLS is not STRICT and its AuthorizationPolicy let the "
        "request through; check kubectl get peerauthentication -A and kubectl get authorizationpolicy -A",
    ),
    "with-a-sidecar": (
        {"sidecar": True, **probe_from("curl-probe-forbidden.txt")},
        "the client meant to be outside the mesh (default/plaintext-client) has an istio-proxy "
        "sidecar, so its request was no plaintext request from outside the mesh",
    ),
    "timed-out": (
        probe_from("curl-probe-timeout.txt"),
        "the plaintext request from outside the mesh (default/plaintext-client) never reached "
        "httpbin: curl exit 28 (curl: (28) Operation timed out after 5000 milliseconds with 0 bytes "
        "received), not a connection its sidecar closed or reset, so it proves nothing; check that "
        "default/plaintext-client can resolve and reach http://httpbin.httpbin:8000/get",
    ),
    "unresolved": (probe_from("curl-probe-unresolved.txt"), "never reached httpbin: curl exit 6"),
    "connection-refused": (probe_from("curl-probe-refused.txt"), "never reached httpbin: curl exit 7"),
    "no-curl": (probe_from("curl-probe-no-curl.txt"), "never reached httpbin: curl exit 127"),
    "exec-failed": (
        {"status": "", "curlExit": None, "output": "error: unable to upgrade connection"},
        "could not send the plaintext request from default/plaintext-client (curl did not run): "
        "error: unable to upgrade connection",
    ),
}


@pytest.mark.parametrize("case", sorted(PLAINTEXT_FAILURES))
def test_a_plaintext_request_answered_or_not_from_outside_the_mesh_fails(case):
    changes, expected = PLAINTEXT_FAILURES[case]
    report, found = judged(hardening(plaintext=changes))
    assert len(report.problems) == 1 and expected in found, found
    assert report.details["plaintextRefused"]["refused"] is False


def test_facts_without_the_hardening_fail_each_of_its_checks_and_none_leaves_it_unjudged():
    report, _ = judged({})
    assert report.problems == [
        "no runc probe was recorded (96-mesh-facts.sh's hardening.runcProbe)",
        "no metadata server probe was recorded (96-mesh-facts.sh's hardening.metadata)",
        "no plaintext probe was recorded (96-mesh-facts.sh's hardening.plaintext)",
    ]
    assert not any(
        part[key]
        for part, key in zip(report.details.values(), ("refused", "blocked", "refused"), strict=True)
    )
    facts, evidence = sample_facts(NODE), [sample_evidence(NODE)]
    assert verify(facts, evidence, "httpbin", None).as_dict()["hardening"] is None
    failed = verify(facts, evidence, "httpbin", None, hardening={})
    assert not failed.passed and len(failed.problems) == 3


def test_every_failing_check_adds_its_own_problem():
    report, _ = judged(
        hardening(
            runcProbe=runc_from("kubectl-run-runc-probe-admitted.txt", 0),
            metadata=probe_from("curl-probe-token.txt"),
            plaintext=probe_from("curl-probe-token.txt"),
        )
    )
    assert [p.split(" ", 3)[:3] for p in report.problems] == [
        ["a", "runc", "pod"],
        ["the", "metadata", "server"],
        ["httpbin", "answered", "a"],
    ]


# --- 96-mesh-facts.sh, with kubectl stand-ins -------------------------------------------------------


def test_the_facts_script_records_the_hardening_the_mock_engine_replays(tmp_path, jq):
    result = run_facts_with(tmp_path, fake_kubectl("curl-get-mtls.txt"))
    assert result.returncode == 0, result.stderr
    recorded = json.loads(result.stdout)["hardening"]
    if os.environ.get("KATA_MESH_UPDATE_SAMPLES"):
        (SAMPLES / HARDENING).write_text(json.dumps(recorded, indent=2) + "\n")
    assert recorded == sample(HARDENING)
    report = verify(
        facts_of(result), [sample_evidence(NODE)], "httpbin", None, namespaces=NAMESPACES, hardening=recorded
    )
    assert report.passed, report.problems


CURL_SAMPLES = sorted(p.name for p in SAMPLES.glob("curl-probe-*.txt"))


@pytest.mark.parametrize("name", CURL_SAMPLES)
def test_the_script_reads_each_probe_as_the_verdict_tests_do(tmp_path, jq, name):
    result = run_facts_with(tmp_path, fake_kubectl("curl-get-mtls.txt", metadata=name, plaintext=name))
    assert result.returncode == 0, result.stderr
    recorded = json.loads(result.stdout)["hardening"]
    for part in ("metadata", "plaintext"):
        assert {k: recorded[part][k] for k in ("status", "curlExit", "output")} == probe_from(name)


@pytest.mark.parametrize(
    ("name", "exit_code"),
    [("kubectl-run-runc-probe-admitted.txt", 0), ("kubectl-run-runc-probe-rbac.txt", 1)],
)
def test_the_script_records_kubectls_exit_status_and_words_for_the_runc_pod(tmp_path, jq, name, exit_code):
    result = run_facts_with(tmp_path, fake_kubectl("curl-get-mtls.txt", runc=name))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["hardening"]["runcProbe"] == {
        "namespace": "httpbin",
        "pod": "runc-probe",
        **runc_from(name, exit_code),
    }


def test_the_runc_pod_is_a_server_side_dry_run_without_a_runtime_class(tmp_path, jq):
    result = run_facts_with(tmp_path, fake_kubectl("curl-get-mtls.txt"))
    assert result.returncode == 0, result.stderr
    [run] = [c for c in kubectl_calls(tmp_path) if " run runc-probe " in c]
    assert run == (
        "-n httpbin run runc-probe --image=docker.io/curlimages/curl:8.11.1 --restart=Never "
        "--labels=app=runc-probe --dry-run=server --command -- sleep 1"
    )


def test_the_metadata_server_is_asked_for_the_token_from_the_in_mesh_kata_client(tmp_path, jq):
    result = run_facts_with(tmp_path, fake_kubectl("curl-get-mtls.txt"))
    assert result.returncode == 0, result.stderr
    calls = kubectl_calls(tmp_path)
    [asked] = [c for c in calls if "/computeMetadata/" in c]
    assert asked.startswith("-n httpbin exec mesh-client -c mesh-client -- sh -c ")
    assert asked.endswith(f"probe -m 5 -H Metadata-Flavor: Google {METADATA_TOKEN_URL}")
    # The body is thrown away: an answer would carry the node's token.
    assert "-o /dev/null" in asked
    assert f"-n httpbin exec mesh-client -c mesh-client -- getent hosts {METADATA_HOST}" in calls


def test_every_pod_the_proof_makes_is_deleted_when_it_ends(tmp_path, jq):
    result = run_facts_with(tmp_path, fake_kubectl("curl-get-mtls.txt"))
    assert result.returncode == 0, result.stderr
    calls = kubectl_calls(tmp_path)
    assert calls[-2:] == [
        "-n httpbin delete pod mesh-client --ignore-not-found --wait=true --grace-period=1 --timeout=5s",
        "-n default delete pod plaintext-client --ignore-not-found --wait=true --grace-period=1 --timeout=5s",
    ]
    # Made afresh: an earlier run's leftovers go first.
    assert calls.index("-n default delete pod plaintext-client --ignore-not-found --wait=true") < next(
        i for i, c in enumerate(calls) if " run plaintext-client " in c
    )


@pytest.mark.parametrize(
    ("old", "new", "message", "deleted"),
    [
        (
            '*"delete pod plaintext-client"* | *"run plaintext-client"* | *"wait --for=condition=Ready pod/plaintext-client"*) ;;',
            '*"delete pod plaintext-client"* | *"run plaintext-client"*) ;;\n'
            '  *"wait --for=condition=Ready pod/plaintext-client"*) exit 1 ;;\n'
            '  *"describe pod plaintext-client"*) echo "Warning  Failed  ErrImagePull" ;;',
            "the plaintext client pod (default/plaintext-client) is not Ready: Warning  Failed  ErrImagePull",
            ["-n httpbin delete pod mesh-client", "-n default delete pod plaintext-client"],
        ),
        (
            '*"delete pod plaintext-client"* | *"run plaintext-client"* |',
            '*"run plaintext-client"*) echo "Error from server (Forbidden): refused" >&2; exit 1 ;;\n'
            '  *"delete pod plaintext-client"* |',
            "could not create the plaintext client pod in default (kubectl's error above)",
            ["-n httpbin delete pod mesh-client", "-n default delete pod plaintext-client"],
        ),
        (
            '*"exec mesh-client"*) cat "$SAMPLES/curl-get-mtls.txt" ;;',
            '*"exec mesh-client"*) cat "$SAMPLES/curl-get-failed.txt" ;;',
            "the in-mesh request to http://httpbin.httpbin:8000/get answered 503",
            ["-n httpbin delete pod mesh-client"],
        ),
    ],
    ids=["plaintext-client-not-ready", "plaintext-client-refused", "in-mesh-request-failed"],
)
def test_a_failing_step_still_deletes_the_pods_it_made(tmp_path, jq, old, new, message, deleted):
    kubectl = fake_kubectl("curl-get-mtls.txt")
    assert old in kubectl
    result = run_facts_with(tmp_path, kubectl.replace(old, new))
    assert result.returncode == 1
    assert f"ERROR: {message}" in result.stderr
    cleanup = [
        c.rsplit(" --ignore-not-found", 1)[0] for c in kubectl_calls(tmp_path) if "--grace-period=1" in c
    ]
    assert cleanup == deleted


def test_the_facts_step_declares_the_hardenings_arguments():
    program = cached_run("dev")
    given = command_args(program.one(COMMAND, "proof-mesh-facts").inputs["create"])
    assert (
        given["--metadata-url"]
        == "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token"
    )
    assert given["--metadata-host"] == "metadata.google.internal"
    assert given["--outside-namespace"] == OUTSIDE_NAMESPACE == "default"
    assert {
        f"--{k}": v for k, v in FACTS_ARGS if k in ("metadata-url", "metadata-host", "outside-namespace")
    } == {k: given[k] for k in ("--metadata-url", "--metadata-host", "--outside-namespace")}
    # The outside namespace is none the program makes: no sidecar injection, no sandbox label.
    assert OUTSIDE_NAMESPACE not in namespace_labels("dev")


# --- The real kubectl against a stand-in API server ------------------------------------------------


def find_kubectl() -> str:
    """The kubectl scripts/setup.sh unpacks (beside helm), or one on PATH."""
    cached = ROOT / ".cache" / "tools" / "kubectl"
    found = str(cached) if os.access(cached, os.X_OK) else shutil.which("kubectl")
    if found is None:
        unavailable("no kubectl: scripts/setup.sh unpacks one (needs npm)")
    return found


# Pod Security admission's warning for istio-init in a namespace that warns at baseline
# (pod-security-admission's check_capabilities_baseline, "non-default capabilities").
ISTIO_INIT_WARNING = (
    'would violate PodSecurity "baseline:latest": non-default capabilities (container "istio-init" '
    'must not include "NET_ADMIN", "NET_RAW" in securityContext.capabilities.add)'
)


class StandInApi(http.server.BaseHTTPRequestHandler):
    """The discovery kubectl asks for, and pod creation judged as the API server would: Istio's
    injection where the namespace asks for it (test_admission's), the sandbox policy and binding
    as the dev stack declares them with their CEL evaluated (test_admission's evaluator), a denial
    worded as the API server words it. Each pod it is sent is kept in `created`."""

    created: ClassVar[list[tuple[str, dict[str, list[str]], dict[str, Any]]]] = []

    def _send(self, code: int, doc: dict[str, Any], warnings: tuple[str, ...] = ()) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        for warning in warnings:
            self.send_header("Warning", "299 - " + json.dumps(warning))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = urlparse(self.path).path
        if path == "/api":
            self._send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        elif path == "/apis":
            self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        elif path == "/api/v1":
            pods = {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod"}
            pods |= {"verbs": ["create", "delete", "get", "list"], "shortNames": ["po"]}
            self._send(200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": [pods]})
        else:
            self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404})

    def do_POST(self) -> None:
        url = urlparse(self.path)
        namespace = url.path.split("/")[4]
        pod = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        pod["metadata"]["namespace"] = namespace
        self.created.append((namespace, parse_qs(url.query), pod))
        labels = namespace_labels("dev").get(namespace, {})
        seen = pod
        if (
            labels.get("istio-injection") == "enabled"
            and pod["metadata"]["labels"].get("sidecar.istio.io/inject") != "false"
        ):
            seen = injected(pod)
        warnings = ()
        if labels.get("pod-security.kubernetes.io/warn") == "baseline" and pod_security_violations(
            seen["spec"], "baseline"
        ):
            assert pod_security_violations(seen["spec"], "baseline") == [
                "istio-init adds ['NET_ADMIN', 'NET_RAW']"
            ]
            warnings = (ISTIO_INIT_WARNING,)
        policy, binding = policy_of(), binding_of()
        decision = admit(policy, binding, Request(seen, labels))
        name = pod["metadata"]["name"]
        if decision.denials:
            # dispatcher.go: the first denial, with the policy's and the binding's names; its
            # reason the validation's (every one of the policy's says Forbidden), inside
            # admission.NewForbidden's message.
            assert {v["reason"] for v in policy["spec"]["validations"]} == {"Forbidden"}
            denial = (
                f"ValidatingAdmissionPolicy '{policy['metadata']['name']}' with binding "
                f"'{binding['metadata']['name']}' denied request: {decision.denials[0]}"
            )
            status = {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f'pods "{name}" is forbidden: {denial}',
                "reason": "Forbidden",
                "details": {"name": name, "kind": "pods", "causes": [{"message": denial}]},
                "code": 403,
            }
            self._send(403, status, warnings)
        else:
            self._send(201, seen, warnings)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stand_in_api(tmp_path: Path) -> Iterator[Path]:
    """The stand-in API server on 127.0.0.1 and a kubeconfig for it."""
    StandInApi.created = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandInApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "stand-in.kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "users": [{"name": "u", "user": {}}],
            }
        )
    )
    yield kubeconfig
    server.shutdown()
    thread.join()


@pytest.mark.system
def test_the_real_kubectl_sends_a_runc_pod_that_the_policy_refuses_and_a_restricted_plaintext_client(
    tmp_path, jq, stand_in_api
):
    """The script's two `kubectl run`s go to the real kubectl: the runc pod (a dry run) is refused
    by the declared policy and kubectl's words are the sample's; the plaintext client is created
    as asked (its image and command kept), outside the mesh, meeting `restricted`."""
    real = find_kubectl()
    kubectl = fake_kubectl("curl-get-mtls.txt").replace(
        'case "$*" in\n',
        'case "$*" in\n'
        f'  *"run runc-probe"* | *"run plaintext-client"*) exec {real} --kubeconfig {stand_in_api} "$@" ;;\n',
        1,
    )
    result = run_facts_with(tmp_path, kubectl)
    assert result.returncode == 0, result.stderr
    recorded = json.loads(result.stdout)["hardening"]
    assert recorded["runcProbe"] == sample(HARDENING)["runcProbe"]
    [(ns, query, runc), (outside_ns, outside_query, client)] = StandInApi.created
    assert (ns, query["dryRun"], "runtimeClassName" in runc["spec"]) == ("httpbin", ["All"], False)
    assert (outside_ns, "dryRun" in outside_query) == ("default", False)
    assert client["metadata"]["labels"] == {"app": "plaintext-client", "sidecar.istio.io/inject": "false"}
    assert "runtimeClassName" not in client["spec"] and "initContainers" not in client["spec"]
    [container] = client["spec"]["containers"]
    assert (container["image"], container["command"]) == (
        "docker.io/curlimages/curl:8.11.1",
        ["sleep", "3600"],
    )
    assert pod_security_violations(client["spec"], "restricted") == []
    assert client["spec"]["automountServiceAccountToken"] is False
    report = verify(
        facts_of(result), [sample_evidence(NODE)], "httpbin", None, namespaces=NAMESPACES, hardening=recorded
    )
    assert report.passed, report.problems


# --- The real curl against stand-in servers on 127.0.0.1 -------------------------------------------


class Answering(http.server.BaseHTTPRequestHandler):
    """Answers every GET with `status` (a metadata server handing out a token; httpbin answering)."""

    status = 200

    def do_GET(self) -> None:
        body = b'{"access_token":"not-a-token","expires_in":3599,"token_type":"Bearer"}'
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Resetting(socketserver.BaseRequestHandler):
    """Resets the connection once the request is read, as httpbin's sidecar does to plaintext."""

    def handle(self) -> None:
        self.request.recv(65536)
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.request.close()


class Silent(socketserver.BaseRequestHandler):
    """Accepts and never answers, as a sidecar whose upstream connection the node drops."""

    def handle(self) -> None:
        self.request.recv(65536)
        threading.Event().wait(8)


@pytest.fixture
def servers() -> Iterator[dict[str, int]]:
    started: dict[str, socketserver.ThreadingTCPServer] = {}
    handlers: tuple[tuple[str, type[socketserver.BaseRequestHandler]], ...] = (
        ("answering", Answering),
        ("resetting", Resetting),
        ("silent", Silent),
    )
    for name, handler in handlers:
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started[name] = server
    yield {name: server.server_address[1] for name, server in started.items()}
    for server in started.values():
        server.shutdown()
        server.server_close()


def run_with_real_curl(tmp_path: Path, metadata_port: int, httpbin_port: int):
    """96-mesh-facts.sh with the probes' `kubectl exec` run here: the pod's shell and curl are the
    real ones, the metadata server and httpbin stand-ins on 127.0.0.1."""
    require_tool("curl")
    kubectl = fake_kubectl("curl-get-mtls.txt").replace(
        'case "$*" in\n',
        'case "$*" in\n'
        '  *"exec mesh-client"*" sh -c "* | *"exec mesh-client"*" getent hosts "* | *"exec plaintext-client"*)\n'
        '    while [[ $1 != -- ]]; do shift; done; shift; exec "$@" ;;\n',
        1,
    )
    metadata_url = (
        f"http://127.0.0.1:{metadata_port}/computeMetadata/v1/instance/service-accounts/default/token"
    )
    given = dict(FACTS_ARGS) | {
        "metadata-url": metadata_url,
        "metadata-host": "localhost",
        "url": f"http://127.0.0.1:{httpbin_port}/get",
    }
    result = run_facts_with(tmp_path, kubectl, tuple(given.items()))
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    return facts["hardening"], verify_hardening(facts["hardening"], "httpbin", NODE)


@pytest.mark.system
def test_real_curl_a_metadata_server_that_never_answers_and_an_httpbin_that_resets_pass(
    tmp_path, jq, servers
):
    recorded, report = run_with_real_curl(tmp_path, servers["silent"], servers["resetting"])
    assert report.passed, report.problems
    assert (recorded["metadata"]["status"], recorded["metadata"]["curlExit"]) == ("000", 28)
    assert recorded["metadata"]["output"].startswith("curl: (28) ")
    assert recorded["metadata"]["dns"]["answer"].endswith(" localhost")
    assert (recorded["plaintext"]["status"], recorded["plaintext"]["curlExit"]) == ("000", 56)
    assert recorded["plaintext"]["output"] == "curl: (56) Recv failure: Connection reset by peer"


@pytest.mark.system
def test_real_curl_a_metadata_server_and_an_httpbin_that_answer_fail(tmp_path, jq, servers):
    recorded, report = run_with_real_curl(tmp_path, servers["answering"], servers["answering"])
    assert (recorded["metadata"]["status"], recorded["metadata"]["curlExit"]) == ("200", 0)
    # curl's body (the token) is not kept.
    assert "not-a-token" not in json.dumps(recorded)
    assert [p.split(" HTTP 200")[0] for p in report.problems] == [
        "the metadata server answered",
        "httpbin answered a plaintext request from outside the mesh (default/plaintext-client, no sidecar) with",
    ]


# --- Every stack ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_every_stacks_report_carries_the_hardening_and_it_passes(stack):
    report = cached_run(stack).output("verification")
    assert report["passed"] is True, report["problems"]
    found = report["hardening"]
    assert set(found) == {"runcRefused", "metadataBlocked", "plaintextRefused"}
    assert found["runcRefused"]["refused"] is True
    assert found["runcRefused"]["namespace"] == "httpbin"
    assert found["metadataBlocked"]["blocked"] is True and found["metadataBlocked"]["curlExit"] == 28
    assert found["metadataBlocked"]["node"] == f"kata-mesh-{stack}-worker-0"
    assert found["plaintextRefused"]["refused"] is True and found["plaintextRefused"]["curlExit"] == 56
