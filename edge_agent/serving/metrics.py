"""Prometheus ``/metrics``: the same request records, exported with vLLM's names.

Each serving server has its own :class:`CollectorRegistry` (several can run in
one process, e.g. in tests). Names follow vLLM V1 where the meaning is the
same (FACTS.md): TTFT and ITL histograms with vLLM's buckets, e2e and queue
time, prompt/generation token counters, and per-model gauges of running and
waiting requests and KV cache usage; plus the fleet's cost, carbon and
forbidden-request counters.

Labels: ``model_name`` as in vLLM (its Grafana dashboards and alerts select on
it), plus ``version`` (several versions of a model may be loaded during a
rollout) and, on request metrics, ``priority`` (the priority class name). The
extra labels do not break vLLM's dashboards: their queries select by
``model_name`` and aggregate (``sum by (le)``), so a series per version or
class is summed away. The fleet's own ``fleet_*`` metrics use the same labels.
``/metrics`` answers in the Prometheus text format, or in OpenMetrics when
the scraper's ``Accept`` header prefers ``application/openmetrics-text``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from edge_agent.serving.telemetry import Outcome, RequestRecord

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80,
                160, 640, 2560)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680)
MODEL_LABELS = ("model_name", "version")
LABELS = (*MODEL_LABELS, "priority")

EngineGauges = tuple[str, str, int, int, float]
"""(model, version, running, waiting, kv cache usage fraction) of one loaded model."""


class _EngineCollector(Collector):
    def __init__(self, gauges: Callable[[], Iterable[EngineGauges]]) -> None:
        self._gauges = gauges

    def collect(self) -> Iterable[GaugeMetricFamily]:
        running = GaugeMetricFamily("vllm:num_requests_running", "Requests in the running batch.",
                                    labels=list(MODEL_LABELS))
        waiting = GaugeMetricFamily("vllm:num_requests_waiting", "Requests waiting for admission.",
                                    labels=list(MODEL_LABELS))
        kv = GaugeMetricFamily("vllm:kv_cache_usage_perc", "KV cache usage (1 = full).", labels=list(MODEL_LABELS))
        for model, version, r, w, frac in self._gauges():
            running.add_metric([model, version], r)
            waiting.add_metric([model, version], w)
            kv.add_metric([model, version], frac)
        return [running, waiting, kv]


class PrometheusExporter:
    """Observer of :class:`RequestRecord` objects; serves a per-server registry."""

    def __init__(self, gauges: Callable[[], Iterable[EngineGauges]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Arrival to first token, queueing included.",
                              LABELS, buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Gap between consecutive output tokens.",
                             LABELS, buckets=ITL_BUCKETS, registry=r)
        self.tpot = Histogram("vllm:time_per_output_token_seconds", "(e2e - TTFT) / (output tokens - 1).",
                              LABELS, buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Arrival to finish of completed requests.",
                             LABELS, buckets=E2E_BUCKETS, registry=r)
        self.queue = Histogram("vllm:request_queue_time_seconds", "Arrival to first admission.",
                               LABELS, buckets=E2E_BUCKETS, registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens processed.", LABELS, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Output tokens generated.", LABELS, registry=r)
        self.requests = Counter("fleet_requests", "Finished requests by outcome.", [*LABELS, "outcome"], registry=r)
        self.forbidden = Counter("fleet_requests_forbidden", "Requests refused by residency policy (403).",
                                 LABELS, registry=r)
        self.cost = Counter("fleet_request_cost_usd", "Attributed GPU cost of requests, USD.", LABELS, registry=r)
        self.carbon = Counter("fleet_request_carbon_grams", "Attributed carbon of requests, gCO2e (SCI).",
                              LABELS, registry=r)
        self.energy = Counter("fleet_request_energy_joules", "Attributed energy of requests, J.", LABELS, registry=r)
        self.gpu_seconds = Counter("fleet_request_gpu_seconds", "Attributed device-seconds of requests.",
                                   LABELS, registry=r)
        r.register(_EngineCollector(gauges))

    def __call__(self, rec: RequestRecord) -> None:
        lv = rec.group
        self.requests.labels(*lv, rec.outcome.value).inc()
        if rec.outcome is Outcome.FORBIDDEN:
            self.forbidden.labels(*lv).inc()
        st = rec.stats
        if st is not None:
            if st.ttft_s is not None:
                self.ttft.labels(*lv).observe(st.ttft_s)
            itl = self.itl.labels(*lv)
            for gap in st.itl_s:
                itl.observe(gap)
            if st.tpot_s is not None:
                self.tpot.labels(*lv).observe(st.tpot_s)
            if st.e2e_s is not None and rec.outcome is Outcome.OK:
                self.e2e.labels(*lv).observe(st.e2e_s)
            if st.queue_time_s is not None:
                self.queue.labels(*lv).observe(st.queue_time_s)
            self.prompt_tokens.labels(*lv).inc(st.prompt_tokens)
            self.generation_tokens.labels(*lv).inc(st.output_tokens)
            self.gpu_seconds.labels(*lv).inc(st.gpu_seconds)
        if rec.cost is not None:
            self.cost.labels(*lv).inc(rec.cost.cost_usd)
            self.carbon.labels(*lv).inc(rec.cost.carbon_g)
            self.energy.labels(*lv).inc(rec.cost.energy_j)


def openmetrics_latest(registry: CollectorRegistry) -> bytes:
    """The registry in OpenMetrics text format.

    prometheus_client 0.22+ escapes names for the exposition; with its default
    ("underscores") it writes ``vllm:...`` in HELP/TYPE but ``vllm_...`` in the
    samples, which no parser accepts. Names with colons are valid in
    OpenMetrics' legacy character set, so they are written as they are.
    """
    from prometheus_client.openmetrics import exposition

    try:
        return exposition.generate_latest(registry, escaping="allow-utf-8")
    except TypeError:  # before prometheus_client 0.22: no escaping at all
        return exposition.generate_latest(registry)
