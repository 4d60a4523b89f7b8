"""scripts/plan.py: what a stack would build, written out offline, with secrets kept secret."""

from __future__ import annotations

import html
import importlib.util
import ipaddress
import itertools
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from harness import (
    PROJECT,
    ROOT,
    STACKS,
    built_image_names,
    cached_run,
    node_vms,
    require_charts,
    require_helm,
    require_tool,
    run_program,
    stack_config,
)
from seed import SEED_MODULES

from components.node_provisioning import NodeStep
from components.settings import SettingsError
from offline import engine, plan
from offline.charts import releases as charts_of

# Every stack planned again, with helm: with the system tests (scripts/test.sh), to keep the plain
# run short.
pytestmark = pytest.mark.system

# RFC 5737 documentation ranges: what the plan's placeholders must come from.
DOCUMENTATION_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
# The seed's containerd config (REFERENCE section 1): runc by default, kata beside it.
SEED_KATA_RUNTIME_TYPE = "io.containerd.kata.v2"
SEED_RUNC_RUNTIME_TYPE = "io.containerd.runc.v2"


_plans: dict[str, plan.Plan] = {}


@pytest.fixture(scope="module", autouse=True)
def plans_folder(tmp_path_factory):
    _plans.clear()
    _plan_root.append(tmp_path_factory.mktemp("plans"))
    yield
    _plan_root.clear()


_plan_root: list[Path] = []


def made(stack: str) -> plan.Plan:
    """One plan per stack for the module, written to a temporary folder; dev's charts rendered from
    the upstream archives (tests/test_charts.py renders every stack's), the others' values only."""
    if stack not in _plans:
        charts_dir = require_charts() if stack == "dev" else None
        result = plan.make_plan(stack, _plan_root[0] / stack, charts_dir, offline=True)
        result.write()
        _plans[stack] = result
    return _plans[stack]


def files_of(stack: str) -> dict[str, str]:
    out = made(stack).out
    return {str(p.relative_to(out)): p.read_text(errors="replace") for p in plan.iter_files(out)}


@pytest.mark.parametrize("stack", STACKS)
def test_the_plan_writes_every_part_the_readme_names(stack):
    require_helm()
    result = made(stack)
    files = files_of(stack)
    for name in ("resources.md", "graph.dot", "kubernetes.yaml", "summary.txt"):
        assert name in files, name
    instances = node_vms(result.graph.program)
    for vm in instances:
        assert f"nodes/{vm.inputs['name']}/steps.md" in files
    for release in result.releases:
        assert f"helm/{release.release.release_name}/values.yaml" in files
        if stack == "dev":
            assert f"helm/{release.release.release_name}/rendered.yaml" in files, release.source.note
        else:
            assert "could not be had" in files[f"helm/{release.release.release_name}/NOT-RENDERED.txt"]
    assert not result.failed


def test_the_graph_is_drawn_as_svg_with_every_resource():
    require_tool("dot", "scripts/test.sh installs graphviz when run as root")
    files = files_of("dev")
    svg = html.unescape(files["graph.svg"])
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for r in made("dev").graph.resources:
        assert f">{r.name}</text>" in svg, r.name


@pytest.mark.parametrize("stack", STACKS)
def test_no_secret_reaches_any_plan_file(stack):
    for name, text in files_of(stack).items():
        assert "PRIVATE KEY" not in text, name
        assert "placeholder\n-----END" not in text, name
        # A bootstrap token looks like abcdef.0123456789abcdef.
        assert not re.search(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b", text), name
        # The certificate key (the plan's stand-in for it) travels only on secret stdin.
        assert plan.PLACEHOLDER_RANDOM_HEX[:16] not in text, name
    steps = "\n".join(text for name, text in files_of(stack).items() if name.endswith("steps.md"))
    if node_vms(made(stack).graph.program)[1:]:
        assert "travel on stdin as a secret: [secret]" in steps  # the join carries its token there


def test_the_kubeconfig_and_private_key_outputs_are_secrets_in_the_plan_too():
    outputs = made("dev").graph.program.raw_stack_outputs
    for key in ("kubeconfig", "sshPrivateKey"):
        assert plan.shown(outputs[key]) == "[secret]", key


@pytest.mark.parametrize("stack", STACKS)
def test_missing_operator_settings_get_documentation_placeholders_and_warnings(stack, monkeypatch):
    for variable in ("GOOGLE_PROJECT", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT"):
        monkeypatch.delenv(variable, raising=False)
    config, warnings = plan.plan_config(stack)
    assert any(w.startswith("gcp:project is not set") for w in warnings)
    for key in ("sshAllowedCidrs", "apiAllowedCidrs"):
        cidrs = json.loads(config[f"{PROJECT}:{key}"])
        assert cidrs and all(
            any(ipaddress.ip_network(c).subnet_of(net) for net in DOCUMENTATION_NETS)
            for c in cidrs  # type: ignore[arg-type]
        )
        assert any(key in w for w in warnings)


def test_a_project_from_the_environment_needs_no_placeholder(monkeypatch):
    monkeypatch.setenv("GOOGLE_PROJECT", "my-real-project")
    config, warnings = plan.plan_config("dev")
    assert not any("gcp:project" in w for w in warnings)
    assert "gcp:project" not in config


def write_stack(tmp_path: Path, monkeypatch, name: str, config: dict) -> None:
    monkeypatch.setattr(engine, "STACKS_DIR", tmp_path)
    (tmp_path / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump({"config": config}))


def test_an_encrypted_private_key_is_a_secret_placeholder(tmp_path, monkeypatch):
    base = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    encrypted = {"secure": "v1:c2VjcmV0LWtleS1ieXRlcw==:bm90LXJlYWwtY2lwaGVydGV4dA=="}
    write_stack(tmp_path, monkeypatch, "dev", {**base, f"{PROJECT}:sshPrivateKey": encrypted})
    config, warnings = plan.plan_config("dev")
    assert any("sshPrivateKey is encrypted" in w for w in warnings)
    assert config[f"{PROJECT}:sshPrivateKey"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")


def test_an_encrypted_value_the_plan_cannot_stand_in_for_is_refused(tmp_path, monkeypatch):
    base = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    write_stack(tmp_path, monkeypatch, "dev", {**base, f"{PROJECT}:adminUser": {"secure": "v1:abc"}})
    with pytest.raises(plan.PlanError, match="adminUser is encrypted"):
        plan.plan_config("dev")


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "plan.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_the_command_plans_dev_offline_and_prints_a_summary(tmp_path):
    result = run_cli("dev", "--out", str(tmp_path / "dev"), "--offline")
    assert result.returncode == 0, result.stderr
    summary = result.stdout
    assert "Plan of stack dev:" in summary
    assert "kata-mesh-dev-cp-0: control-plane, n2-standard-4 in us-central1-a, Spot" in summary
    assert "Kubernetes 1.36.4" in summary and "Kata 3.32.0" in summary
    assert re.search(r"Critical path: \d+ steps, network-vpc \.\.\. proof-verdict", summary)
    assert summary.endswith(f"Written to {tmp_path / 'dev'}\n")
    assert (tmp_path / "dev" / "summary.txt").read_text() + f"Written to {tmp_path / 'dev'}\n" == summary
    # Without charts or a network, each release keeps its values and says why it is not rendered.
    for release in ("flannel", "istio-base", "istiod"):
        folder = tmp_path / "dev" / "helm" / release
        assert (folder / "values.yaml").is_file()
        assert "could not be had" in (folder / "NOT-RENDERED.txt").read_text()
        assert not (folder / "rendered.yaml").exists()
        assert re.search(rf"^  {release}: values only; chart .* could not be had", summary, re.MULTILINE)


def plan_command():
    spec = importlib.util.spec_from_file_location("plan_command", ROOT / "scripts" / "plan.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bad_settings_fail_with_the_message_pulumi_up_gives(tmp_path, monkeypatch, capsys):
    base = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    bad = {f"{PROJECT}:machineType": "e2-standard-4", f"{PROJECT}:workerCount": -1}
    with pytest.raises(SettingsError) as raised:
        run_program("dev", False, bad)
    write_stack(tmp_path, monkeypatch, "dev", {**base, **bad, "gcp:project": "kata-mesh-test"})
    out = tmp_path / "out"
    assert plan_command().main(["dev", "--offline", "--out", str(out)]) == 1
    # The program's own message, as `pulumi up` would print it, and nothing written.
    assert capsys.readouterr().err == f"error: {raised.value}\n"
    assert not out.exists()


def test_an_unknown_stack_names_the_stacks_there_are():
    result = run_cli("qa", "--offline")
    assert result.returncode == 2
    assert "no stack file" in result.stderr and "Pulumi.qa.yaml" in result.stderr


# --- nodes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_every_rendered_step_argument_lands_in_a_file_the_script_really_writes(stack):
    """Every *-b64 argument is a file the plan shows, at a path its script names."""
    for commands in made(stack).nodes.values():
        for command in commands:
            if command.script is None:
                continue
            for name in command.step_args:
                # The verdict's report is printed, not written.
                if name.endswith("-b64") and command.script != "97-verdict.sh":
                    assert (command.script, name) in plan.NODE_FILES, (command.resource, name)
    for (script_name, _), spec in plan.NODE_FILES.items():
        # What the node runs: lib.sh (its shared functions write some of these) and the script.
        script = NodeStep(script_name, script_name, ()).script_text
        for literal in filter(None, re.split(r"\{[^}]+\}", spec.path)):
            assert literal in script, (script_name, spec.path)


def test_the_node_files_are_the_seeds_configs_with_placeholder_addresses():
    files = files_of("dev")
    cp = "nodes/kata-mesh-dev-cp-0/files"
    # A baked node's containerd config, Kata drop-in and modules are its image's (its own folder).
    [image] = {path.split("/")[1] for path in files if path.startswith("nodes/kata-mesh-node-")}
    assert image == built_image_names("dev")[0]
    built = f"nodes/{image}/files"
    containerd = tomllib.loads(files[f"{built}/etc/containerd/config.toml"])
    runtimes = containerd["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]
    assert runtimes["default_runtime_name"] == "runc"
    assert runtimes["runtimes"]["runc"]["runtime_type"] == SEED_RUNC_RUNTIME_TYPE
    assert runtimes["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
    assert runtimes["runtimes"]["kata"]["runtime_type"] == SEED_KATA_RUNTIME_TYPE
    assert "ExecStart=/usr/local/bin/containerd" in files[f"{built}/etc/systemd/system/containerd.service"]
    assert files[f"{built}/etc/modules-load.d/kata-mesh.conf"].split() == SEED_MODULES
    assert files[f"{built}/etc/kata-mesh/node-image"].startswith("inputs-hash=")
    assert "opt/kata/share/defaults/kata-containers/config.d/50-kata-mesh-nested.toml" in "\n".join(files)
    documents = {d["kind"]: d for d in yaml.safe_load_all(files[f"{cp}/etc/kubernetes/kubeadm-init.yaml"])}
    cluster = documents["ClusterConfiguration"]
    subnet = ipaddress.ip_network(
        yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"].get(
            f"{PROJECT}:subnetCidr", "10.10.0.0/24"
        )
    )
    internal = ipaddress.ip_address(documents["InitConfiguration"]["localAPIEndpoint"]["advertiseAddress"])
    assert internal in subnet and internal != next(subnet.hosts())  # .1 is GCE's gateway
    external = [
        ipaddress.ip_address(a)
        for a in cluster["apiServer"]["certSANs"]
        if ipaddress.ip_address(a) not in subnet
    ]
    assert external and all(any(a in net for net in DOCUMENTATION_NETS) for a in external)
    assert cluster["networking"]["podSubnet"] == "10.244.0.0/16"


def test_each_node_runs_its_own_steps_and_the_control_plane_runs_the_clusters():
    nodes = dict(made("staging").nodes)
    # Private nodes: the bastion every SSH step goes through only waits for its own boot.
    assert [c.script for c in nodes.pop("kata-mesh-staging-bastion")] == ["00-wait-ready.sh"]
    # The node image's build, in its own folder: the installs a stock node would run, sealed.
    [image] = [node for node in nodes if node.startswith("kata-mesh-node-")]
    assert [c.script for c in nodes.pop(image)] == [
        "00-wait-ready.sh",
        "10-prerequisites.sh",
        "20-containerd.sh",
        "30-kata.sh",
        "40-kubernetes.sh",
        "42-pull-images.sh",
        "99-seal-image.sh",
    ]
    assert set(nodes) == {
        "kata-mesh-staging-cp-0",
        "kata-mesh-staging-cp-1",
        "kata-mesh-staging-cp-2",
        "kata-mesh-staging-worker-0",
        "kata-mesh-staging-worker-1",
    }
    for node, commands in nodes.items():
        scripts = [c.script for c in commands]
        assert scripts[:3] == ["00-wait-ready.sh", "12-node-image.sh", "15-metadata-block.sh"], node
        if node.endswith("cp-0"):
            assert "50-kubeadm-init.sh" in scripts and "96-mesh-facts.sh" in scripts
            # Every other node's token is made here; the certificate key rides on stdin.
            tokens = [c for c in commands if c.script == "60-join-token.sh"]
            assert len(tokens) == 4 and sum(c.secret_stdin for c in tokens) == 2
        else:
            assert "50-kubeadm-init.sh" not in scripts
            joins = [c for c in commands if c.resource == f"{node}-join"]
            assert len(joins) == 1 and joins[0].secret_stdin


# --- resources and graph ----------------------------------------------------------------------------


def longest_chain_length(edges: dict[str, list[str]]) -> int:
    """Longest path (in resources) by relaxing distances, independent of the plan's own search."""
    distance = dict.fromkeys(edges, 1)
    for _ in edges:
        for node, before in edges.items():
            for b in before:
                distance[node] = max(distance[node], distance[b] + 1)
    return max(distance.values())


@pytest.mark.parametrize("stack", STACKS)
def test_the_critical_path_is_a_real_chain_and_none_is_longer(stack):
    graph = made(stack).graph
    path = graph.critical_path()
    for before, after in itertools.pairwise(path):
        assert before.urn in graph.waits_for[after.urn], (before.name, after.name)
    assert not graph.waits_for[path[0].urn]
    assert len(path) == longest_chain_length(graph.waits_for)
    assert path[-1].name == "proof-verdict"


def test_a_dependency_on_a_component_waits_for_every_resource_inside_it():
    graph = made("dev").graph
    by_name = {r.name: r for r in graph.resources}
    # The app's Deployment waits for istiod, and so for everything the mesh's release needs.
    deployment = by_name["httpbin-deployment"]
    assert by_name["mesh-istiod"].urn in graph.waits_for[deployment.urn]


@pytest.mark.parametrize("stack", STACKS)
def test_resources_md_lists_every_resource_once_under_its_component(stack):
    result = made(stack)
    text = files_of(stack)["resources.md"]
    rows = re.findall(r"^\| `[^`]+` \| `([^`]+)` \|", text, flags=re.MULTILINE)
    assert sorted(rows) == sorted(r.name for r in result.graph.resources)
    assert text.startswith(f"# Plan of stack `{stack}`: {len(result.graph.resources)} resources")
    assert "## `nodes` (kata-mesh:nodes:ClusterNodes)" in text
    assert f"## Critical path: {len(result.graph.critical_path())} steps" in text


def test_the_dot_graph_has_a_cluster_per_component_and_the_path_in_red():
    result = made("dev")
    dot = files_of("dev")["graph.dot"]
    assert dot.count("subgraph cluster_") == len(result.graph.components)
    red_edges = re.findall(r"-> r\d+ \[color=\"#c0392b\"", dot)
    assert len(red_edges) == len(result.graph.critical_path()) - 1


def test_kubernetes_yaml_holds_every_object_the_program_declares():
    documents = list(yaml.safe_load_all(files_of("dev")["kubernetes.yaml"]))
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in documents if d)
    assert ("RuntimeClass", "kata-runtime") in kinds
    assert ("Deployment", "httpbin") in kinds
    assert ("PeerAuthentication", "default") in kinds
    assert all(d["apiVersion"] for d in documents if d)


def test_the_readme_graph_picture_is_the_current_dev_plan():
    """docs/plan-dev.dot and .svg are what `scripts/plan.py dev` draws today."""
    drawn = files_of("dev")["graph.dot"]
    committed = (ROOT / "docs" / "plan-dev.dot").read_text()
    assert committed == drawn, (
        "regenerate: venv/bin/python scripts/plan.py dev --offline && cp plan/dev/graph.* docs/"
    )
    svg = html.unescape((ROOT / "docs" / "plan-dev.svg").read_text())
    for r in made("dev").graph.resources:
        assert f">{r.name}</text>" in svg, r.name


def test_the_plan_never_empties_a_folder_it_did_not_write(tmp_path):
    precious = tmp_path / "work" / "notes.txt"
    precious.parent.mkdir()
    precious.write_text("mine")
    result = plan.make_plan("dev", tmp_path / "work", None, offline=True)
    with pytest.raises(plan.PlanError, match="is not empty and holds no earlier plan"):
        result.write()
    assert precious.read_text() == "mine"
    # A folder an earlier plan wrote is replaced whole.
    result = plan.make_plan("dev", tmp_path / "plan", None, offline=True)
    result.write()
    (tmp_path / "plan" / "stale.txt").write_text("from an older plan")
    result.write()
    assert not (tmp_path / "plan" / "stale.txt").exists()
    assert (tmp_path / "plan" / "resources.md").is_file()


def test_kubernetes_objects_wait_for_the_cluster_through_their_provider():
    graph = made("dev").graph
    init = next(r for r in graph.resources if r.name == "cluster-init")
    objects = [r for r in graph.resources if r.type.startswith("kubernetes:")]
    assert objects
    for r in objects:
        assert init.urn in graph.ancestors(r.urn), r.name
    # So the critical path runs through the pod network's release, after init.
    names = [r.name for r in graph.critical_path()]
    assert names.index("cluster-init") < names.index("cluster-flannel") < names.index("cluster-nodes-ready")


def test_resources_md_says_what_each_resource_waits_for():
    text = files_of("dev")["resources.md"]
    row = next(
        line for line in text.splitlines() if line.startswith("| `command:Command` | `cluster-init` |")
    )
    assert "`kata-mesh-dev-cp-0-provision-metadata-block`" in row
    flannel = next(line for line in text.splitlines() if "| `cluster-flannel` |" in line)
    assert "`cluster-k8s`" in flannel and "`cluster-kube-flannel`" in flannel


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        # What `pulumi config set sshAllowedCidrs 203.0.113.7/32` writes: a string, not a list.
        ("sshAllowedCidrs", "203.0.113.7/32", "sshAllowedCidrs = 203.0.113.7/32: must be a list of strings"),
        ("subnetCidr", "10.10.0.1/24", "did you mean 10.10.0.0/24?"),
    ],
)
def test_settings_the_program_refuses_stop_the_plan_with_its_message_not_a_traceback(
    tmp_path, monkeypatch, capsys, key, value, message
):
    base = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    write_stack(
        tmp_path, monkeypatch, "dev", {**base, f"{PROJECT}:{key}": value, "gcp:project": "kata-mesh-test"}
    )
    assert plan_command().main(["dev", "--offline", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_the_plan_renders_each_release_with_the_programs_values_at_the_stacks_version(monkeypatch, tmp_path):
    seen = []
    real = plan.charts.render_text

    def recording(release, archive, kube_version, helm):
        seen.append((release.release_name, release.values, kube_version))
        return real(release, archive, kube_version, helm)

    monkeypatch.setattr(plan.charts, "render_text", recording)
    require_helm()
    plan.make_plan("dev", tmp_path / "dev", require_charts(), offline=True)
    declared = {r.release_name: r.values for r in charts_of(cached_run("dev"))}
    assert {name: values for name, values, _ in seen} == declared
    assert {version for _, _, version in seen} == {stack_config("dev")[f"{PROJECT}:kubernetesVersion"]}


def test_offline_means_no_chart_is_pulled_and_online_tries_the_repository(monkeypatch, tmp_path):
    pulls = []
    monkeypatch.setattr(plan.charts, "_pull", lambda release, helm: pulls.append(release.chart))
    monkeypatch.setattr(plan.charts, "find_helm", lambda: "/usr/bin/true")
    plan.make_plan("dev", tmp_path / "a", None, offline=True)
    assert pulls == []
    plan.make_plan("dev", tmp_path / "b", None, offline=False)
    assert sorted(pulls) == ["base", "flannel", "istiod"]


def test_a_chart_found_without_helm_says_why_it_is_not_rendered(monkeypatch, tmp_path):
    monkeypatch.setattr(plan.charts, "find_helm", lambda: None)
    result = plan.make_plan("dev", tmp_path / "dev", require_charts(), offline=True)
    result.write()
    note = (tmp_path / "dev" / "helm" / "flannel" / "NOT-RENDERED.txt").read_text()
    assert "not rendered: no helm (run scripts/setup.sh)" in note


def test_a_release_helm_refuses_fails_the_plan_and_the_command(monkeypatch, tmp_path, capsys):
    def refusing(release, archive, kube_version, helm):
        raise plan.charts.RenderError(
            f"helm template {release.release_name} failed: values don't meet the schema"
        )

    monkeypatch.setattr(plan.charts, "render_text", refusing)
    monkeypatch.setattr(plan.charts, "find_helm", lambda: "/usr/bin/true")
    out = tmp_path / "dev"
    code = plan_command().main(["dev", "--charts", str(require_charts()), "--offline", "--out", str(out)])
    assert code == 1
    assert "flannel: FAILED" in capsys.readouterr().out
    assert "values don't meet the schema" in (out / "helm" / "flannel" / "NOT-RENDERED.txt").read_text()


def test_kubernetes_yaml_holds_every_declared_object_and_nothing_else():
    documents = [d for d in yaml.safe_load_all(files_of("dev")["kubernetes.yaml"]) if d]
    written = sorted((d["kind"], d["metadata"]["name"]) for d in documents)
    program = cached_run("dev")
    declared = sorted(
        (r.inputs["kind"], r.inputs["metadata"]["name"])
        for r in program.registrations
        if r.custom and r.type.startswith("kubernetes:") and r.type != "kubernetes:helm.sh/v3:Release"
    )
    assert written == declared
