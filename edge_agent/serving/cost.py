"""Cost, energy and carbon of one request (pure, plus one optional NVML meter).

Inputs are the request's ``gpu_seconds`` (its share of every batch step it
took part in, from :class:`~edge_agent.runtime.request.RequestStats`) and the
placement's ``costModel``.

* **Cost** = ``gpuPricePerHourUsd / 3600 x gpu_seconds``. Idle time is not
  charged to any request.
* **Energy**, where NVML is present (CUDA + ``pynvml`` from nvidia-ml-py,
  imported lazily): the device's total-energy counter
  (``nvmlDeviceGetTotalEnergyConsumption``, mJ since driver load) is read at
  most once a second; the joules of each interval are divided by the
  GPU-seconds the engine attributed to requests in it, and a request gets
  ``gpu_seconds x`` that ratio, i.e. its GPU-seconds share of the measured
  energy. Otherwise a stated model::

      energy_j = gpu_seconds x gpuPowerW x UTILISATION

  ``gpuPowerW`` is the board power (FACTS.md: H100 PCIe 350 W, L4 72 W) and
  ``UTILISATION`` = 0.7 is the assumed mean draw as a fraction of it while
  the device computes (an estimate: "inference rarely draws the maximum",
  FACTS.md; no sourced figure). On a CPU-only node gpu_seconds are the
  engine's CPU-seconds and the same model applies.
* **Carbon** per the Green Software Foundation SCI v1.1 (ISO/IEC 21031:2024):
  ``O + M`` with ``O = energy_kWh x gridGco2PerKwh`` (location-based) and
  ``M = embodiedGco2PerGpuHour x gpu_seconds / 3600`` (the embodied
  emissions amortised over the GPU's life, per GPU-hour reserved).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

UTILISATION = 0.7
"""Assumed mean power draw as a fraction of board power while computing (estimate)."""

GRID_GCO2_PER_KWH = {
    "DE": 344, "FR": 44, "PL": 615, "SE": 36, "NO": 31, "NL": 253, "IE": 280, "ES": 146, "IT": 288,
    "FI": 72, "GB": 211, "US": 384, "IN": 708, "SG": 499, "JP": 482, "KR": 414,
}
"""Lifecycle grid intensity by country, gCO2e/kWh: Ember 2024 annual averages (via Green Web
Foundation co2.js average-intensities.json; FACTS.md). Location-based, as SCI requires."""
WORLD_GCO2_PER_KWH = 473.0
"""World average, Ember 2024 (FACTS.md): the default for a country not listed."""


@dataclass(frozen=True)
class CostModel:
    """A placement's ``costModel``; missing keys take these defaults."""

    gpu_price_per_hour_usd: float = 3.0
    """USD per GPU-hour. Default 3.00: H100 on-demand, about 2.0-4.0 in 2025-26 (GCP A3 about 3.00; FACTS.md, estimate)."""
    gpu_power_w: float = 350.0
    """Board power in watts. Default 350: H100 PCIe maximum board power (FACTS.md)."""
    grid_gco2_per_kwh: float = WORLD_GCO2_PER_KWH
    """Grid carbon intensity, gCO2e/kWh. Default: this node's country (Ember 2024), else the world average 473."""
    embodied_gco2_per_gpu_hour: float = 15.0
    """Embodied emissions amortised per GPU-hour, gCO2e. Default 15 (estimate; no sourced figure)."""

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None, country: str = "") -> CostModel:
        s = spec or {}
        grid = GRID_GCO2_PER_KWH.get(country.upper(), WORLD_GCO2_PER_KWH)

        def num(key: str, default: float) -> float:
            v = s.get(key)
            if v is None:
                return default
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"costModel.{key} {v!r} must be a number >= 0")
            return float(v)

        return cls(num("gpuPricePerHourUsd", cls.gpu_price_per_hour_usd), num("gpuPowerW", cls.gpu_power_w),
                   num("gridGco2PerKwh", float(grid)),
                   num("embodiedGco2PerGpuHour", cls.embodied_gco2_per_gpu_hour))


@dataclass(frozen=True)
class RequestCost:
    cost_usd: float
    energy_j: float
    carbon_g: float


def cost_usd(model: CostModel, gpu_seconds: float) -> float:
    return model.gpu_price_per_hour_usd / 3600.0 * gpu_seconds


def modelled_energy_j(model: CostModel, gpu_seconds: float) -> float:
    return gpu_seconds * model.gpu_power_w * UTILISATION


def carbon_g(model: CostModel, energy_j: float, gpu_seconds: float) -> float:
    """SCI: operational (energy x grid intensity) + embodied share."""
    return energy_j / 3.6e6 * model.grid_gco2_per_kwh + model.embodied_gco2_per_gpu_hour * gpu_seconds / 3600.0


def request_cost(model: CostModel, gpu_seconds: float, energy_j: float | None = None) -> RequestCost:
    """Cost, energy (measured when given, else modelled) and carbon of one request."""
    e = modelled_energy_j(model, gpu_seconds) if energy_j is None else energy_j
    return RequestCost(cost_usd(model, gpu_seconds), e, carbon_g(model, e, gpu_seconds))


class NvmlEnergy:
    """Joules per attributed GPU-second, measured from NVML's energy counter.

    ``energy_j(gpu_seconds)`` is thread-safe. It returns None (use the model)
    when NVML is unavailable or no interval has been measured yet.
    """

    def __init__(self, device_index: int = 0, min_interval_s: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._min_interval_s = min_interval_s
        self._handle: Any = None
        self._nvml: Any = None
        try:
            import pynvml  # type: ignore[import-not-found]  # optional: nvidia-ml-py

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            self._nvml = pynvml
            self._last_mj = int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception as exc:  # noqa: BLE001 - no NVML, no driver, no counter (pre-Volta): model instead
            log.debug("NVML energy counter unavailable (%s); using the modelled energy", exc)
            self._handle = None
        self._last_t = time.monotonic()
        self._pending_gpu_s = 0.0
        self._j_per_gpu_s: float | None = None

    @property
    def available(self) -> bool:
        return self._handle is not None

    def energy_j(self, gpu_seconds: float) -> float | None:
        if self._handle is None:
            return None
        with self._lock:
            self._pending_gpu_s += gpu_seconds
            now = time.monotonic()
            if now - self._last_t >= self._min_interval_s and self._pending_gpu_s > 0:
                try:
                    mj = int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
                except Exception:  # noqa: BLE001
                    return None
                self._j_per_gpu_s = (mj - self._last_mj) / 1000.0 / self._pending_gpu_s
                self._last_mj, self._last_t, self._pending_gpu_s = mj, now, 0.0
            ratio = self._j_per_gpu_s
        return None if ratio is None else gpu_seconds * ratio
