"""Fixtures: the tiny model built once per session into ``<models>/tiny/v1``, and
real serving runtimes (uvicorn and gRPC on real sockets, real engines)."""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.runtime.make_model import make_model
from fleet_contract.weights import manifest
from edge_agent.serving.residency import Location
from edge_agent.serving.server import Serving, ServingConfig
from edge_agent.state import LocalObject

EU = {"dataClass": "personal-eu", "description": "EEA only", "revision": 3,
      "allow": {"anywhere": False, "jurisdictions": ["EU", "EEA"], "countries": [], "sites": []},
      "deny": {"jurisdictions": [], "countries": [], "sites": []}}
GERMANY = {"dataClass": "personal-de", "allow": {"countries": ["DE"]}}
US_ONLY = {"dataClass": "personal-us", "allow": {"countries": ["US"]}}
PUBLIC = {"dataClass": "public", "allow": {"anywhere": True}}
JURISDICTIONS = {"DE": ["EU", "EEA"], "FR": ["EU", "EEA"], "NO": ["EEA"], "US": ["US"], "GB": ["UK"]}


def site_location(site: str, country: str) -> dict:
    """The SiteLocation spec the hub publishes for a site (as ``hub.publish`` builds it)."""
    return {"site": site, "country": country, "jurisdictions": JURISDICTIONS[country]}


CLASSES = {"interactive": {"value": 1000, "preemptionPolicy": "PreemptLowerPriority", "sheddable": False},
           "batch": {"value": 100, "preemptionPolicy": "Never"},
           "background": {"value": -10, "sheddable": True}}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_model("tiny", root / "tiny" / "v1", seed=0)
    (root / "tiny" / "v2").symlink_to(root / "tiny" / "v1")
    return root


@functools.lru_cache(maxsize=4)
def tiny_digest(models_dir: Path) -> str:
    """The weights digest of the tiny model (v1; v2 is the same files), as a Model spec carries it."""
    return manifest(models_dir / "tiny" / "v1").digest


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    """A test that leaves engine, serving or drain threads running fails."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 10
    names = ("edge-engine", "fleet-serving", "drain-")
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive() and t.name.startswith(names)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not left, f"threads left running: {left}"


class Harness:
    """A running :class:`Serving` with helpers to apply desired objects and read reports."""

    def __init__(self, models_dir: Path, *, site: str = "fra-1", country: str = "DE", jurisdiction: str = "EU",
                 **cfg: Any) -> None:
        from edge_agent.runtime.engine import EngineConfig

        cfg.setdefault("engine_config", EngineConfig(max_batch=8, max_len=256, device="cpu"))
        cfg.setdefault("telemetry_interval_s", 3600.0)
        self.reports: list[tuple[str, dict]] = []
        self.report: Callable[[str, dict], object] = lambda kind, payload: self.reports.append((kind, payload))
        self.site, self.country = site, country
        self.digest = tiny_digest(models_dir)
        self.serving = Serving(ServingConfig(models_dir=models_dir, **cfg), Location(site, country, jurisdiction),
                               "node-a", lambda k, p: self.report(k, p))
        self._versions = itertools.count(1)
        self.objects: dict[tuple[str, str], LocalObject] = {}

    def start(self) -> Harness:
        self.serving.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.serving.http_port}"

    def apply(self, kind: str, name: str, spec: dict) -> LocalObject:
        prev = self.objects.get((kind, name))
        obj = LocalObject(f"{kind}/{name}", kind, name, next(self._versions), spec)
        self.serving.appliers[kind].apply(obj, prev)  # type: ignore[attr-defined]
        self.objects[(kind, name)] = obj
        return obj

    def remove(self, kind: str, name: str) -> None:
        obj = self.objects.pop((kind, name))
        self.serving.appliers[kind].remove(obj)  # type: ignore[attr-defined]

    def locate(self) -> Harness:
        """Apply the hub's SiteLocation of this harness's site (where the door takes its location from)."""
        self.apply("SiteLocation", self.site, site_location(self.site, self.country))
        return self

    def standard(self, **assignment: Any) -> Harness:
        """The site's location, policies, classes and one placement of tiny v1 as service 'chat'."""
        self.locate()
        for name, spec in (("eu-gdpr", EU), ("germany-only", GERMANY), ("us-only", US_ONLY), ("public", PUBLIC)):
            self.apply("ResidencyPolicy", name, spec)
        for name, spec in CLASSES.items():
            self.apply("PriorityClass", name, spec)
        self.apply("Placement", "fra-1.node-a", {
            "site": "fra-1", "node": "node-a",
            "assignments": [{"service": "chat", "model": "tiny", "version": "v1", "replicas": 1, "gpuType": "cpu",
                             "digest": self.digest, **assignment}],
            "costModel": {"gpuPricePerHourUsd": 2.5, "gpuPowerW": 350, "gridGco2PerKwh": 380,
                          "embodiedGco2PerGpuHour": 15}})
        return self

    def kinds(self, kind: str) -> list[dict]:
        return [p for k, p in self.reports if k == kind]

    def stop(self) -> None:
        self.serving.stop()


@pytest.fixture
def harness(models_dir: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**kw: Any) -> Harness:
        h = Harness(kw.pop("models_dir", models_dir), **kw)
        made.append(h)
        return h

    yield make
    for h in reversed(made):
        h.stop()


def wait_until(cond: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
