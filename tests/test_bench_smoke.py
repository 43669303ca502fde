"""Smoke test of tools/bench/compare.py: N = 2, one trial, short windows; it only has to finish.

The numbers are not checked (too noisy for CI); the test asserts that the run completes and
prints every row of both tables and every target line. Needs root (throwaway users). Skips
when supervisord (PyPI) or nginx (Debian) cannot be installed on this machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPARE = REPO / "tools" / "bench" / "compare.py"
RUN_BUDGET_S = 50  # the run itself (about 25 s here); first-time installs come on top

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the benchmark creates users"),
]

LIFECYCLE_ROWS = [
    "daemon RSS (MiB)",
    "daemon CPU over 2 s idle (ms)",
    "cold start → all answering (ms)",
    "kill -9 → new pid (ms)",
    "kill -9 → answering again (ms)",
    "stop all (SIGTERM → no tenant process) (ms)",
    "`status` CLI wall time (ms)",
]
RELAY_ROWS = ["| direct |", "| janus |", "| nginx |", "| nginx-buffered |"]
TARGETS = [
    "N=2: RSS ≤ supervisord's",
    "N=2: cold start to all answering ≤ 1.0 s",
    "N=2: kill → new pid ≤ 50 ms",
    "N=2: kill → answering ≤ 0.65 s",
    "N=2: stop all ≤ 0.3 s",
    "N=2: status CLI ≤ 60 ms",
    "relay p50 ≤ nginx's",
    "relay req/s ≥ 0.8 × nginx's",
    "relay MB/s ≥ 0.8 × nginx's",
]


def _installs() -> None:
    """Install the competitors first (cached) so their install time is not the run's."""
    done = subprocess.run([sys.executable, str(COMPARE), "--install-only"], cwd=REPO,
                          capture_output=True, text=True, timeout=900, check=False)
    if done.returncode == 77:
        pytest.skip(f"competitor not installable here: {done.stderr.strip()[-500:]}")
    assert done.returncode == 0, done.stderr[-3000:]


def _run(budget_s: float) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(COMPARE), "--tenants", "2", "--trials", "1", "--idle", "2",
           "--kills", "1", "--cli-runs", "2", "--start-timeout", "20",
           "--relay-rounds", "1", "--relay-duration", "0.5", "--relay-big-duration", "0.5"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=budget_s)
    except subprocess.TimeoutExpired:
        # SIGTERM unwinds compare.py's cleanup (users, daemons, nginx, scratch dirs).
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"compare.py took more than {budget_s:.0f} s; stderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_compare_runs_and_prints_every_row() -> None:
    _installs()
    run = _run(RUN_BUDGET_S)
    if run.returncode == 77:
        pytest.skip(f"competitor not available: {run.stderr.strip()[-500:]}")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    for label in LIFECYCLE_ROWS:
        row = next((line for line in lines if line.startswith(f"| {label} |")), None)
        assert row is not None, f"missing row {label!r} in:\n{run.stdout}"
        assert row.count("|") == 4 and " - " not in row, row
    assert "| metric | janus N=2 | supervisord N=2 |" in lines
    assert any(line.startswith("emulators alone") and "N=2 " in line for line in lines)
    for path in RELAY_ROWS:
        assert any(line.startswith(path) for line in lines), f"no relay row {path}"
    for target in TARGETS:
        assert any(line.startswith(f"- target {target}: ") for line in lines), target
