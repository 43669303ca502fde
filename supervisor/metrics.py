"""Prometheus metrics of the daemon, in one registry served at ``GET /metrics``.

Counters are incremented where things happen (relay policy, probes, restarts); gauges that
describe tenants are filled at scrape time from their status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from supervisor.status import TenantState

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST


def exposition() -> bytes:
    """Every metric of ``REGISTRY`` in the Prometheus text format, collected now."""
    return generate_latest(REGISTRY)


POLICY_REFUSALS = Counter(
    "janus_policy_refusals_total",
    "Requests refused at a tenant socket by its policy, by rule.",
    ["tenant", "rule"],
    registry=REGISTRY,
)

RELOADS = Counter(
    "janus_reloads_total",
    "Configuration reloads (SIGHUP or POST /v1/reload), by result: applied, failed, invalid.",
    ["result"],
    registry=REGISTRY,
)


@dataclass(frozen=True)
class TenantSample:
    """What the tenant collector reads about one tenant at scrape time."""

    name: str
    state: TenantState
    ready: bool
    pid: int | None
    restarts: int
    restarts_by_cause: Mapping[str, int] = field(default_factory=dict)
    probe_failures: int = 0
    time_to_ready_s: float | None = None
    uptime_s: float | None = None


@dataclass(frozen=True)
class ProcessUsage:
    """Resident memory and CPU time of a server and every process below it."""

    rss_bytes: int
    cpu_s: float
    processes: int


def process_usage(pid: int) -> ProcessUsage | None:
    """Usage of ``pid`` plus its descendants (model runners); None when it is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    rss, cpu, count = 0, 0.0, 0
    for proc in procs:
        try:
            with proc.oneshot():
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                cpu += times.user + times.system
            count += 1
        except psutil.Error:
            continue  # exited between listing and reading
    return ProcessUsage(rss, cpu, count)


class TenantCollector(Collector):
    """Per-tenant gauges and counters, read from ``source`` at every scrape."""

    def __init__(self, source: Callable[[], Iterable[TenantSample]]) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        return []  # tenants come and go with reloads: nothing fixed to declare

    def collect(self) -> Iterable[Metric]:
        fams = _families()
        for sample in self._source():
            _add_sample(fams, sample)
        return list(fams.values())


Family = GaugeMetricFamily | CounterMetricFamily


def _families() -> dict[str, Family]:
    t = ["tenant"]
    return {
        "up": GaugeMetricFamily("janus_tenant_up", "1 while the tenant's server runs.", labels=t),
        "ready": GaugeMetricFamily(
            "janus_tenant_ready",
            "1 when the tenant is ready (server answers, variants built).",
            labels=t,
        ),
        "state": GaugeMetricFamily(
            "janus_tenant_state",
            "1 for the tenant's current life-cycle state, else 0.",
            labels=["tenant", "state"],
        ),
        "restarts": CounterMetricFamily(
            "janus_tenant_restarts",
            "Ends of the tenant's server, by cause (each followed by a new start unless the "
            "restart policy or budget says otherwise).",
            labels=["tenant", "cause"],
        ),
        "probes": CounterMetricFamily(
            "janus_tenant_probe_failures", "Failed liveness probes.", labels=t
        ),
        "ttr": GaugeMetricFamily(
            "janus_tenant_time_to_ready_seconds",
            "From spawning the server to ready, for its latest start.",
            labels=t,
        ),
        "uptime": GaugeMetricFamily(
            "janus_tenant_uptime_seconds", "Age of the running server.", labels=t
        ),
        "rss": GaugeMetricFamily(
            "janus_tenant_memory_rss_bytes",
            "Resident memory of the server and its runner processes.",
            labels=t,
        ),
        "cpu": CounterMetricFamily(
            "janus_tenant_cpu_seconds",
            "CPU time (user + system) of the running server and its runner processes.",
            labels=t,
        ),
        "procs": GaugeMetricFamily(
            "janus_tenant_processes", "Processes of the server, runners included.", labels=t
        ),
    }


def _add_sample(fams: dict[str, Family], s: TenantSample) -> None:
    name = [s.name]
    fams["up"].add_metric(name, 1.0 if s.pid else 0.0)
    fams["ready"].add_metric(name, 1.0 if s.ready else 0.0)
    for state in TenantState:
        fams["state"].add_metric([s.name, state.value], 1.0 if state is s.state else 0.0)
    causes = dict(s.restarts_by_cause)
    # Restarts the tenant counted without a cause (older Tenant) still show up.
    if (unclassified := s.restarts - sum(causes.values())) > 0:
        causes["unclassified"] = unclassified
    for cause, count in sorted(causes.items()):
        fams["restarts"].add_metric([s.name, cause], float(count))
    fams["probes"].add_metric(name, float(s.probe_failures))
    if s.time_to_ready_s is not None:
        fams["ttr"].add_metric(name, s.time_to_ready_s)
    if s.uptime_s is not None:
        fams["uptime"].add_metric(name, s.uptime_s)
    usage = process_usage(s.pid) if s.pid else None
    if usage is not None:
        fams["rss"].add_metric(name, float(usage.rss_bytes))
        fams["cpu"].add_metric(name, usage.cpu_s)
        fams["procs"].add_metric(name, float(usage.processes))


_collector: TenantCollector | None = None


def watch_tenants(source: Callable[[], Iterable[TenantSample]]) -> TenantCollector:
    """Register the tenant collector on ``REGISTRY`` (replacing an earlier one)."""
    global _collector
    if _collector is not None:
        REGISTRY.unregister(_collector)
    _collector = TenantCollector(source)
    REGISTRY.register(_collector)
    return _collector
