"""httpbin survives a node drain (rolling upgrades run `kubectl drain`, which evicts through the
Eviction API and so respects PodDisruptionBudgets): with 2 or more workers it runs 2 replicas, one
per node, under a budget that keeps 1 available; with fewer it runs 1 replica and has no budget
(minAvailable 1 over a single pod would block every drain of its node forever).

Expected values are Kubernetes' documented API (policy/v1 PodDisruptionBudget, a Pod's
topologySpreadConstraints), written out here."""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

import kubernetes_validate
import pytest
from harness import (
    KATA_GUEST_KERNEL,
    PROJECT,
    STACKS,
    ProgramRun,
    Registration,
    as_manifest,
    cached_run,
    require_tool,
    run_program,
    sample,
    sample_evidence,
    stack_config,
)
from test_mesh import KUBERNETES_SCHEMA_VERSION, kubernetes_objects
from test_verification import NODE, fake_kubectl, run_facts_with

from components.verification import verify

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SERVICE = "kubernetes:core/v1:Service"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"
HTTPBIN_LABELS = {"app": "httpbin", "version": "v1"}
# The one spread constraint: a domain per node (the node's well-known hostname label), at most one
# replica more on any node than on the emptiest eligible one, and a replica that would break that
# stays Pending rather than share a node.
SPREAD_OVER_NODES = [
    {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": HTTPBIN_LABELS},
    }
]


def workers(stack: str) -> int:
    return int(stack_config(stack)[f"{PROJECT}:workerCount"])


SPREAD_STACKS = [stack for stack in STACKS if workers(stack) >= 2]


@functools.cache
def run_with_workers(stack: str, worker_count: int) -> ProgramRun:
    """One `pulumi up` of the stack with workerCount set, shared by this file's tests."""
    return run_program(stack, preview=False, overrides={f"{PROJECT}:workerCount": worker_count})


# (stack, workerCount or None for the stack file's own): fewer than 2 workers. With 0 the control
# planes take the workloads (untainted, labelled for Kata): dev's one, staging's three.
FEW_WORKERS = [("dev", None), ("dev", 0), ("staging", 1), ("staging", 0)]


def few_workers_run(stack: str, worker_count: int | None) -> ProgramRun:
    return cached_run(stack) if worker_count is None else run_with_workers(stack, worker_count)


def inputs(program: ProgramRun, type_: str, name: str) -> dict[str, Any]:
    return as_manifest(program.one(type_, name).inputs)


def budgets(program: ProgramRun) -> list[Registration]:
    return program.of_type(PDB)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a LabelSelector made only of matchLabels selects a pod with these labels."""
    assert set(selector) == {"matchLabels"}, selector
    return selector["matchLabels"].items() <= labels.items()


def test_staging_and_prod_are_the_stacks_with_two_or_more_workers():
    """Today's stack files (dev has 1 worker, staging 2, prod 3): the tests below cover both."""
    assert SPREAD_STACKS == ["prod", "staging"]
    assert workers("dev") == 1


# The previews (runs of their own) with the system tests: the plain suite's time budget.
@pytest.mark.parametrize(
    "preview", [pytest.param(True, marks=pytest.mark.system), False], ids=["preview", "up"]
)
@pytest.mark.parametrize("stack", SPREAD_STACKS)
def test_with_two_or_more_workers_httpbin_runs_two_replicas_on_two_nodes_under_a_budget(stack, preview):
    program = cached_run(stack, preview)
    deployment = inputs(program, DEPLOYMENT, "httpbin-deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]
    assert pod["spec"]["topologySpreadConstraints"] == SPREAD_OVER_NODES
    assert pod["spec"]["runtimeClassName"] == "kata-runtime"

    [budget] = budgets(program)
    assert budget.name == "httpbin-disruption-budget"
    assert as_manifest(budget.inputs) == {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "httpbin", "namespace": "httpbin"},
        "spec": {
            "minAvailable": 1,
            "selector": {"matchLabels": HTTPBIN_LABELS},
            # A drain may evict a replica that is not Ready even when the budget is not met.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
    # One replica may be evicted at a time: a drain goes through, and the other one serves.
    assert deployment["spec"]["replicas"] - budget.inputs["spec"]["minAvailable"] == 1
    assert budget.inputs["metadata"]["namespace"] == deployment["metadata"]["namespace"]


@pytest.mark.parametrize(
    "preview", [pytest.param(True, marks=pytest.mark.system), False], ids=["preview", "up"]
)
@pytest.mark.parametrize("stack", SPREAD_STACKS)
def test_the_budget_is_declared_like_the_apps_other_objects(stack, preview):
    """Same provider and parent as the Deployment, after the app's namespace and istiod."""
    program = cached_run(stack, preview)
    deployment = program.one(DEPLOYMENT, "httpbin-deployment")
    budget = program.one(PDB, "httpbin-disruption-budget")
    assert budget.provider == deployment.provider
    assert budget.parent == deployment.parent
    assert budget.parent.endswith("kata-mesh:workloads:HttpbinApp::httpbin")
    assert program.one("kubernetes:core/v1:Namespace", "httpbin-namespace").urn in budget.dependencies
    assert program.one("kubernetes:helm.sh/v3:Release", "mesh-istiod").urn in budget.dependencies


def spread_runs() -> list[tuple[str, ProgramRun]]:
    return [(stack, cached_run(stack)) for stack in SPREAD_STACKS] + [
        ("dev, 2 workers", run_with_workers("dev", 2))
    ]


def all_runs() -> list[tuple[str, ProgramRun]]:
    few = [
        (f"{stack}, {workers(stack) if n is None else n} workers", few_workers_run(stack, n))
        for stack, n in FEW_WORKERS
    ]
    return spread_runs() + few


# More runs of the program (workerCount changed): with the system tests (the plain suite's budget).
@pytest.mark.system
def test_every_selector_selects_the_pods_of_its_deployment():
    """The Deployment's, its spread constraint's and the budget's selectors all select the pod
    template's labels, and the budget selects exactly the Deployment's pods (the Service's too)."""
    for label, program in all_runs():
        deployment = inputs(program, DEPLOYMENT, "httpbin-deployment")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels == HTTPBIN_LABELS, label
        assert selects(deployment["spec"]["selector"], labels), label
        for constraint in deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
            assert constraint["labelSelector"] == deployment["spec"]["selector"], label
        for budget in budgets(program):
            assert budget.inputs["spec"]["selector"] == deployment["spec"]["selector"], label
            assert selects(budget.inputs["spec"]["selector"], labels), label
        service = inputs(program, SERVICE, "httpbin-service")
        assert service["spec"]["selector"].items() <= labels.items(), label


@pytest.mark.system
@pytest.mark.parametrize(("stack", "worker_count"), FEW_WORKERS)
def test_with_fewer_than_two_workers_httpbin_runs_one_replica_and_no_budget(stack, worker_count):
    """A budget of minAvailable 1 over one replica would let no eviction through: every drain of
    its node would wait forever. So: one replica, no spread constraint, no budget."""
    program = few_workers_run(stack, worker_count)
    deployment = inputs(program, DEPLOYMENT, "httpbin-deployment")
    assert deployment["spec"]["replicas"] == 1
    assert "topologySpreadConstraints" not in deployment["spec"]["template"]["spec"]
    assert budgets(program) == []


# More runs of the program (workerCount changed): with the system tests (the plain suite's budget).
@pytest.mark.system
def test_the_runc_twin_stays_one_replica_without_a_budget_beside_two_kata_replicas():
    """dev with 2 workers: httpbin is spread and budgeted, its runc twin (a comparison, not the
    served app) is not."""
    program = run_with_workers("dev", 2)
    assert inputs(program, DEPLOYMENT, "httpbin-deployment")["spec"]["replicas"] == 2
    twin = inputs(program, DEPLOYMENT, "httpbin-runc-deployment")
    assert twin["spec"]["replicas"] == 1
    assert "topologySpreadConstraints" not in twin["spec"]["template"]["spec"]
    assert [b.inputs["metadata"]["namespace"] for b in budgets(program)] == ["httpbin"]


def test_bookinfo_workloads_stay_one_replica_each_without_spread():
    for deployment in cached_run("staging").of_type(DEPLOYMENT):
        if deployment.name.startswith("bookinfo-"):
            assert deployment.inputs["spec"]["replicas"] == 1, deployment.name
            assert "topologySpreadConstraints" not in deployment.inputs["spec"]["template"]["spec"]


# More runs of the program (workerCount changed): with the system tests (the plain suite's budget).
@pytest.mark.system
def test_every_declared_object_passes_the_strict_schema_with_any_number_of_workers():
    """The Kubernetes OpenAPI check tests/test_mesh.py runs on every stack, here on the runs with
    workerCount changed too; the budget and the spread constraint are in it."""
    kinds: set[str] = set()
    for label, program in all_runs():
        for declared in kubernetes_objects(program):
            manifest = as_manifest(declared.inputs)
            kinds.add(f"{manifest['apiVersion']}/{manifest['kind']}")
            try:
                kubernetes_validate.validate(manifest, KUBERNETES_SCHEMA_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{label}: {declared.name}: {error}")
    assert {"policy/v1/PodDisruptionBudget", "apps/v1/Deployment"} <= kinds


@pytest.mark.parametrize(
    ("type_", "name", "break_it"),
    [
        (PDB, "httpbin-disruption-budget", lambda m: m["spec"].update(minAvailible=1)),
        (
            DEPLOYMENT,
            "httpbin-deployment",
            lambda m: m["spec"]["template"]["spec"]["topologySpreadConstraints"][0].update(
                topologyKeys=["x"]
            ),
        ),
    ],
    ids=["budget", "spread"],
)
def test_the_schema_check_catches_a_wrong_field_in_the_budget_and_the_spread(type_, name, break_it):
    manifest = inputs(cached_run("staging"), type_, name)
    kubernetes_validate.validate(manifest, KUBERNETES_SCHEMA_VERSION, strict=True)
    break_it(manifest)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, KUBERNETES_SCHEMA_VERSION, strict=True)


# --- The proof with two replicas ---------------------------------------------------------------

SECOND_REPLICA = "httpbin-6b8f7c9d4-zq4mn"
SECOND_NODE = "kata-mesh-dev-worker-1"


def two_replicas_started_together() -> tuple[dict[str, Any], dict[str, Any]]:
    """The recorded httpbin pod and a second replica of the same ReplicaSet on another node,
    created in the same second (as a Deployment's first rollout makes them): the API lists them
    by name."""
    pods = sample("kubectl-get-pods.json")
    first = next(p for p in pods["items"] if p["metadata"]["name"] == "httpbin-6b8f7c9d4-x2x7k")
    second = copy.deepcopy(first)
    second["metadata"]["name"] = SECOND_REPLICA
    second["metadata"]["uid"] = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b"
    second["spec"]["nodeName"] = SECOND_NODE
    return first, second


def test_the_proof_passes_with_two_replicas_started_in_the_same_second(tmp_path):
    require_tool("jq")
    first, second = two_replicas_started_together()
    client = next(
        p for p in sample("kubectl-get-pods.json")["items"] if p["metadata"]["name"] == "mesh-client"
    )
    (tmp_path / "app-pods.json").write_text(json.dumps({"items": [first, second]}))
    (tmp_path / "namespace-pods.json").write_text(json.dumps({"items": [first, second, client]}))
    kubectl = (
        fake_kubectl("curl-get-mtls.txt")
        .replace(
            '*"get pods -l app=httpbin -o json"*) namespace_pods httpbin ;;',
            f'*"get pods -l app=httpbin -o json"*) cat {tmp_path / "app-pods.json"} ;;\n'
            f'  *"exec {SECOND_REPLICA}"*) echo {KATA_GUEST_KERNEL} ;;',
        )
        .replace(
            '"-n httpbin get pods -o json") namespace_pods httpbin ;;',
            f'"-n httpbin get pods -o json") cat {tmp_path / "namespace-pods.json"} ;;',
        )
    )
    result = run_facts_with(tmp_path, kubectl)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    # Each replica's node has its own evidence: the recorded sandbox, and the second one's.
    evidence = [sample_evidence(NODE), sample_evidence(SECOND_NODE)]
    evidence[1]["pods"]["items"][0]["metadata"]["uid"] = second["metadata"]["uid"]
    report = verify(facts, evidence, "httpbin", None, namespaces={"httpbin": "httpbin"})
    assert report.passed, report.problems
