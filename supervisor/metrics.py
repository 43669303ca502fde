"""Prometheus metrics of the daemon, in one registry served at ``GET /metrics``.

Counters are incremented where things happen (relay policy, probes, restarts); gauges that
describe tenants are filled at scrape time from their status.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

REGISTRY = CollectorRegistry(auto_describe=True)

POLICY_REFUSALS = Counter(
    "janus_policy_refusals_total",
    "Requests refused at a tenant socket by its policy, by rule.",
    ["tenant", "rule"],
    registry=REGISTRY,
)
