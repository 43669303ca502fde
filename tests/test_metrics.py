"""The per-tenant collector behind GET /metrics: states, restarts, probes, memory and CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from supervisor import metrics
from supervisor.metrics import TenantSample, process_usage, watch_tenants
from supervisor.status import TenantState

# The server burns CPU until the kernel has accounted at least two clock ticks to it, so the
# CPU figure is never a 0.0 that a coarse tick could produce by chance.
TREE = (
    "import os, subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "while sum(os.times()[:2]) < 0.02: pass\n"
    "print('up', flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def server_tree() -> Iterator[int]:
    """A stand-in server with one runner child; yields the server's pid once both exist."""
    proc = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    yield proc.pid
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def scrape() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of REGISTRY, by sample name and sorted labels."""
    text = generate_latest(metrics.REGISTRY).decode()
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def sample(**fields: object) -> TenantSample:
    defaults: dict[str, object] = {"name": "dev", "state": TenantState.READY, "ready": True,
                                   "pid": None, "restarts": 0}
    return TenantSample(**(defaults | fields))  # type: ignore[arg-type]


def test_state_is_one_hot_over_every_state() -> None:
    watch_tenants(lambda: [sample(state=TenantState.BACKOFF, ready=False)])

    states = scrape()["janus_tenant_state"]

    assert states[(("state", "backoff"), ("tenant", "dev"))] == 1.0
    assert sum(states.values()) == 1.0
    assert len(states) == len(TenantState)


def test_up_and_ready_follow_the_status() -> None:
    watch_tenants(lambda: [sample(name="dev", pid=None, ready=False), sample(name="qa")])

    got = scrape()

    assert got["janus_tenant_up"] == {(("tenant", "dev"),): 0.0, (("tenant", "qa"),): 0.0}
    assert got["janus_tenant_ready"] == {(("tenant", "dev"),): 0.0, (("tenant", "qa"),): 1.0}


def test_restarts_by_cause_plus_the_ones_without_a_cause() -> None:
    causes = {"exited": 2, "liveness failed": 1}
    watch_tenants(lambda: [sample(restarts=5, restarts_by_cause=causes, probe_failures=7)])

    got = scrape()

    assert got["janus_tenant_restarts_total"] == {
        (("cause", "exited"), ("tenant", "dev")): 2.0,
        (("cause", "liveness failed"), ("tenant", "dev")): 1.0,
        (("cause", "unclassified"), ("tenant", "dev")): 2.0,
    }
    assert got["janus_tenant_probe_failures_total"] == {(("tenant", "dev"),): 7.0}


def test_time_to_ready_and_uptime_are_reported_when_known() -> None:
    watch_tenants(lambda: [sample(time_to_ready_s=1.25, uptime_s=30.0)])

    got = scrape()

    assert got["janus_tenant_time_to_ready_seconds"] == {(("tenant", "dev"),): 1.25}
    assert got["janus_tenant_uptime_seconds"] == {(("tenant", "dev"),): 30.0}


def test_memory_and_cpu_include_the_runner_processes(server_tree: int) -> None:
    watch_tenants(lambda: [sample(pid=server_tree)])

    got = scrape()

    key = (("tenant", "dev"),)
    assert got["janus_tenant_processes"][key] == 2.0
    assert got["janus_tenant_memory_rss_bytes"][key] > 10 * 1024 * 1024  # two interpreters
    assert got["janus_tenant_cpu_seconds_total"][key] > 0.0


def test_vanished_server_has_no_usage() -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)

    assert process_usage(int(done.stdout)) is None


def test_watching_again_replaces_the_previous_source() -> None:
    watch_tenants(lambda: [sample(name="old")])
    watch_tenants(lambda: [sample(name="new")])

    assert list(scrape()["janus_tenant_ready"]) == [(("tenant", "new"),)]


def test_reloads_are_counted_by_result() -> None:
    before = scrape().get("janus_reloads_total", {}).get((("result", "invalid"),), 0.0)

    metrics.RELOADS.labels("invalid").inc()

    assert scrape()["janus_reloads_total"][(("result", "invalid"),)] == before + 1
