"""Every Helm release the program declares, rendered by a real helm from the upstream chart with
exactly the values the program passes (read from the mock run), on every stack, at the stack's
Kubernetes version; every rendered object strictly schema-checked for that version."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from harness import PROJECT, STACKS, cached_run, require_charts, require_helm, run_program, stack_config

from offline import charts

# Istio's charts whose values were flattened (1.24): defaults under _internal_defaults_do_not_set.
ISTIO_FLAT_VALUES_CHARTS = ("istiod", "base", "gateway")


def kubernetes_version(stack: str) -> str:
    return stack_config(stack)[f"{PROJECT}:kubernetesVersion"]


def schema_version(version: str) -> str:
    """kubernetes-validate ships one schema per minor, named x.y.0."""
    major, minor, _ = version.split(".")
    return f"{major}.{minor}.0"


def releases_of(stack: str) -> dict[str, charts.HelmRelease]:
    return {r.release_name: r for r in charts.releases(cached_run(stack))}


def rendered(stack: str, release_name: str) -> tuple[charts.ChartSource, tuple[Any, ...]]:
    release = releases_of(stack)[release_name]
    source = charts.locate_chart(release, require_charts(), offline=True, helm=None)
    assert source.archive is not None, source.note
    return source, _render_once(release, source.archive, kubernetes_version(stack))


_renders: dict[str, tuple[Any, ...]] = {}


def _render_once(release: charts.HelmRelease, archive: Path, version: str) -> tuple[Any, ...]:
    """Stacks that pass the same values at the same version share one helm run."""
    key = json.dumps([str(archive), release.release_name, release.namespace, release.values, version])
    if key not in _renders:
        _renders[key] = tuple(charts.render(release, archive, version, require_helm()))
    return _renders[key]


def release_params() -> list[Any]:
    return [
        pytest.param(stack, name, id=f"{stack}-{name}") for stack in STACKS for name in releases_of(stack)
    ]


def test_every_stack_declares_the_releases_its_settings_ask_for():
    """Flannel and Istio's base and istiod everywhere; the gateway where ingressGateway is on."""
    for stack in STACKS:
        gateway = stack_config(stack)[f"{PROJECT}:ingressGateway"] == "true"
        expected = {"flannel", "istio-base", "istiod"} | ({"istio-ingressgateway"} if gateway else set())
        assert set(releases_of(stack)) == expected, stack


@pytest.mark.parametrize(("stack", "release_name"), release_params())
def test_each_release_renders_and_every_object_passes_the_strict_schema(stack, release_name):
    source, objects = rendered(stack, release_name)
    release = releases_of(stack)[release_name]
    # The folder holds 1.30.3 for Istio's 1.30.4 pin: a same-minor stand-in is said, never silent.
    assert source.version is not None
    if source.version != release.version:
        assert source.version.split(".")[:2] == release.version.split(".")[:2]
        assert (
            f"{source.version} from {source.archive.name}, in place of the pinned {release.version}"
            in source.note
        )
        assert not source.exact
    assert objects, f"{release_name} rendered nothing"
    version = schema_version(kubernetes_version(stack))
    for manifest in objects:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_the_strict_schema_check_catches_a_wrong_field_in_a_rendered_object():
    _, objects = rendered("dev", "flannel")
    daemonset = json.loads(json.dumps(next(o for o in objects if o["kind"] == "DaemonSet")))
    daemonset["spec"]["template"]["spec"]["hostNetworking"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, "1.36.0", strict=True)


@pytest.mark.parametrize("stack", STACKS)
def test_flannel_gets_the_stacks_pod_network_over_vxlan(stack):
    _, objects = rendered(stack, "flannel")
    config_map = next(o for o in objects if o["kind"] == "ConfigMap")
    net_conf = json.loads(config_map["data"]["net-conf.json"])
    assert net_conf["Network"] == stack_config(stack)[f"{PROJECT}:podCidr"]
    assert net_conf["Backend"] == {"Type": "vxlan"}


@pytest.mark.parametrize("stack", STACKS)
def test_istiod_injects_sidecars_through_istio_init_and_holds_the_app_for_its_proxy(stack):
    _, objects = rendered(stack, "istiod")
    config_maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    injector_values = json.loads(config_maps["istio-sidecar-injector"]["data"]["values"])
    # The injection template reads pilot.cni.enabled: false means the istio-init container.
    assert injector_values["pilot"]["cni"]["enabled"] is False
    mesh = config_maps["istio"]["data"]["mesh"]
    assert "holdApplicationUntilProxyStarts: true" in mesh
    assert "accessLogFile: /dev/stdout" in mesh


def test_istiods_cni_switch_is_what_keeps_istio_init_so_the_check_above_can_fail():
    """The same release with Istio CNI on renders an injector without istio-init: the value the
    program passes is the one that decides."""
    release = releases_of("dev")["istiod"]
    source = charts.locate_chart(release, require_charts(), offline=True, helm=None)
    assert source.archive is not None
    with_cni = charts.HelmRelease(
        **{**release.__dict__, "values": {**release.values, "cni": {"enabled": True}}}
    )
    objects = charts.render(with_cni, source.archive, "1.36.4", require_helm())
    injector = next(o for o in objects if o["metadata"]["name"] == "istio-sidecar-injector")
    assert json.loads(injector["data"]["values"])["pilot"]["cni"]["enabled"] is True


def chart_defaults(archive: Path, chart: str) -> dict[str, Any]:
    import tarfile

    import yaml

    with tarfile.open(archive) as tar:
        member = tar.extractfile(f"{chart}/values.yaml")
        assert member is not None
        values = yaml.safe_load(member.read()) or {}
    # Istio's charts keep their defaults under one key and merge the user's values over it.
    return (
        values.get("_internal_defaults_do_not_set", values) if chart in ISTIO_FLAT_VALUES_CHARTS else values
    )


# Maps a chart copies through as a whole (Istio's meshConfig becomes the mesh ConfigMap, checked
# above), so their keys are not listed in the chart's defaults.
FREE_FORM = {"istiod": {("meshConfig",)}}


def unknown_value_paths(values: Any, defaults: Any, chart: str, path: tuple[str, ...] = ()) -> list[str]:
    """Keys the program sets that the chart does not have: typos and pre-flattening names."""
    if not isinstance(values, dict) or path in FREE_FORM.get(chart, set()):
        return []
    if not isinstance(defaults, dict):
        return []
    unknown = []
    for key, value in values.items():
        if key not in defaults:
            unknown.append(".".join((*path, key)))
        elif defaults[key]:
            unknown += unknown_value_paths(value, defaults[key], chart, (*path, key))
    return unknown


@pytest.mark.parametrize(("stack", "release_name"), release_params())
def test_every_value_the_program_sets_is_one_the_chart_has(stack, release_name):
    release = releases_of(stack)[release_name]
    source, _ = rendered(stack, release_name)
    assert source.archive is not None
    defaults = chart_defaults(source.archive, release.chart)
    assert unknown_value_paths(release.values, defaults, release.chart) == []


def test_the_unknown_value_check_catches_a_misspelt_key():
    source = charts.locate_chart(releases_of("dev")["istiod"], require_charts(), offline=True, helm=None)
    assert source.archive is not None
    defaults = chart_defaults(source.archive, "istiod")
    assert unknown_value_paths({"cnii": {"enabled": False}}, defaults, "istiod") == ["cnii"]
    assert unknown_value_paths({"cni": {"enabeld": False}}, defaults, "istiod") == ["cni.enabeld"]


def gateway_stacks() -> list[str]:
    return [s for s in STACKS if "istio-ingressgateway" in releases_of(s)]


def test_some_stack_runs_the_gateway():
    assert gateway_stacks(), "no stack turns ingressGateway on, so the gateway chart is never rendered"


@pytest.mark.parametrize("stack", gateway_stacks())
def test_the_gateway_is_a_node_port_service_on_the_configured_port(stack):
    _, objects = rendered(stack, "istio-ingressgateway")
    service = next(o for o in objects if o["kind"] == "Service")
    assert service["spec"]["type"] == "NodePort"
    http = next(p for p in service["spec"]["ports"] if p["port"] == 80)
    assert http["nodePort"] == int(stack_config(stack)[f"{PROJECT}:gatewayNodePort"])
    # The Istio Gateway the program declares selects it by this label.
    assert service["spec"]["selector"]["istio"] == "ingressgateway"


def test_the_gateway_charts_values_schema_refuses_a_bad_value():
    """The gateway chart ships values.schema.json, and helm enforces it: a test would notice."""
    stack = gateway_stacks()[0]
    release = releases_of(stack)["istio-ingressgateway"]
    source = charts.locate_chart(release, require_charts(), offline=True, helm=None)
    assert source.archive is not None
    bad = json.loads(json.dumps(release.values))
    bad["service"]["ports"][1]["port"] = "eighty"
    with pytest.raises(charts.RenderError, match="values don't meet the specifications of the schema"):
        charts.render(
            charts.HelmRelease(**{**release.__dict__, "values": bad}),
            source.archive,
            kubernetes_version(stack),
            require_helm(),
        )


def test_a_chart_missing_locally_is_pulled_from_its_repository_once_and_then_cached(tmp_path, monkeypatch):
    """A chart repository served on loopback: the pinned chart is pulled by helm, cached, and the
    cache serves it when the repository is gone."""
    import http.server
    import shutil
    import subprocess
    import threading

    helm = require_helm()
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(require_charts() / "flannel-v0.28.9.tgz", repo)
    subprocess.run([helm, "repo", "index", str(repo)], check=True, capture_output=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(repo))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(charts, "CHART_CACHE", tmp_path / "cache")
    release = charts.HelmRelease(
        **{**releases_of("dev")["flannel"].__dict__, "repository": f"http://127.0.0.1:{server.server_port}"}
    )
    try:
        pulled = charts.locate_chart(release, None, offline=False, helm=helm)
    finally:
        server.shutdown()
        server.server_close()
    assert pulled.archive is not None and pulled.archive.parent == tmp_path / "cache"
    assert pulled.exact and "pulled from http://127.0.0.1" in pulled.note
    cached = charts.locate_chart(release, None, offline=False, helm=helm)
    assert cached.archive == pulled.archive
    assert charts.locate_chart(release, None, offline=True, helm=helm).archive == pulled.archive
    # Offline, with nothing cached, nothing is pulled and the plan says why.
    monkeypatch.setattr(charts, "CHART_CACHE", tmp_path / "empty-cache")
    offline = charts.locate_chart(release, None, offline=True, helm=helm)
    assert offline.archive is None and "offline: not pulled" in offline.note
    monkeypatch.setattr(charts, "CHART_CACHE", tmp_path / "cache")
    # A version the repository does not have is not replaced by another.
    other = charts.HelmRelease(**{**release.__dict__, "version": "v0.28.10"})
    assert charts.locate_chart(other, None, offline=False, helm=helm).archive is None


def test_a_chart_of_another_minor_never_stands_in_for_the_pin(tmp_path):
    release = releases_of("dev")["istio-base"]
    pinned_next_minor = charts.HelmRelease(**{**release.__dict__, "version": "1.31.0"})
    source = charts.locate_chart(pinned_next_minor, require_charts(), offline=True, helm=None)
    assert source.archive is None
    assert "chart base 1.31.0 could not be had" in source.note


def test_helm_renders_at_the_kubernetes_version_it_is_given(tmp_path):
    """No upstream template reads the version, so a chart of the test's own prints what helm was told."""
    import subprocess

    helm = require_helm()
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\n"
        "data:\n  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )
    subprocess.run([helm, "package", str(chart), "-d", str(tmp_path)], check=True, capture_output=True)
    release = charts.HelmRelease("probe", "probe", "probe", "0.1.0", "", "default", {})
    objects = charts.render(release, tmp_path / "probe-0.1.0.tgz", kubernetes_version("dev"), helm)
    assert objects[0]["data"]["kubeVersion"] == "v" + kubernetes_version("dev")


def test_flannel_follows_a_pod_network_other_than_its_default():
    """Every stack uses Flannel's own default (10.244.0.0/16): a changed podCidr must reach it too."""
    program = run_program("dev", False, {f"{PROJECT}:podCidr": "10.200.0.0/16"})
    release = next(r for r in charts.releases(program) if r.release_name == "flannel")
    source = charts.locate_chart(release, require_charts(), offline=True, helm=None)
    assert source.archive is not None
    objects = charts.render(release, source.archive, "1.36.4", require_helm())
    config_map = next(o for o in objects if o["kind"] == "ConfigMap")
    assert json.loads(config_map["data"]["net-conf.json"])["Network"] == "10.200.0.0/16"


def test_the_highest_patch_of_the_pinned_minor_stands_in_and_broken_archives_are_passed_over(tmp_path):
    import shutil
    import tarfile

    folder = tmp_path / "charts"
    folder.mkdir()
    for version in ("1.30.3", "1.30.10", "1.29.9"):
        chart = tmp_path / version / "base"
        chart.mkdir(parents=True)
        (chart / "Chart.yaml").write_text(f"apiVersion: v2\nname: base\nversion: {version}\n")
        with tarfile.open(folder / f"base-{version}.tgz", "w:gz") as tar:
            tar.add(chart, arcname="base")
    (folder / "broken.tgz").write_bytes(b"not a tarball")
    nameless = tmp_path / "nameless" / "x"
    nameless.mkdir(parents=True)
    (nameless / "Chart.yaml").write_text("- just a list\n")
    with tarfile.open(folder / "nameless.tgz", "w:gz") as tar:
        tar.add(nameless, arcname="x")
    shutil.copy(folder / "base-1.30.3.tgz", folder / "copy.tgz")
    release = releases_of("dev")["istio-base"]
    source = charts.locate_chart(release, folder, offline=True, helm=None)
    assert source.version == "1.30.10" and not source.exact
