"""Every test sees an empty chart cache of its own: charts a developer pulled earlier into
.cache/charts never decide a test's outcome."""

from __future__ import annotations

import pytest

from offline import charts


@pytest.fixture(autouse=True)
def empty_chart_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("chart-cache")
    monkeypatch.setattr(charts, "CHART_CACHE", cache)
    monkeypatch.setenv("KATA_MESH_CHART_CACHE", str(cache))
