#!/usr/bin/env python3
"""janus-supervisord side by side with supervisord and nginx, on this machine, in one run.

Run as root from the repository (it creates throwaway users and removes them; it installs PyPI
``supervisor`` into a venv under /tmp/janus-bench-cache and Debian's nginx when missing):

    .venv/bin/python tools/bench/compare.py            # N = 8 and 32, 3 trials

Lifecycle: for each N, the same N emulator tenants (same users, startup delay 0.5 s) run under
janus-supervisord and under supervisord in alternating trials (janus, supervisord, janus, …);
see ``lifecycle.py`` for what each row measures. Relay: janus tenant socket vs direct TCP vs
nginx to one tiny backend; see ``relay.py``. Prints Markdown tables of medians with min–max
and the issue's targets for janus at the largest N, each met or missed.

Exit status: 0 when it ran (whatever the targets), 77 when supervisord or nginx cannot be
installed here (the reason on stderr), 1 on any other failure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO,
    Unavailable,
    ensure_nginx,
    ensure_supervisord,
    med_range,
    precompile,
    throwaway_users,
)

SYSTEMS = ("janus", "supervisord")
# (key, label, scale, digits, pooled): pooled rows use every sample of every trial, the others
# one value per trial.
ROWS = [
    ("rss_mib", "daemon RSS (MiB)", 1.0, 1, False),
    ("idle_cpu_s", "daemon CPU over {idle:g} s idle (ms)", 1000.0, 0, False),
    ("cold_s", "cold start → all answering (ms)", 1000.0, 0, False),
    ("kill_pid_s", "kill -9 → new pid (ms)", 1000.0, 1, True),
    ("kill_answer_s", "kill -9 → answering again (ms)", 1000.0, 0, True),
    ("stop_s", "stop all (SIGTERM → no tenant process) (ms)", 1000.0, 0, False),
    ("cli_ms", "`status` CLI wall time (ms)", 1.0, 1, True),
]


def _values(trials: list[dict[str, Any]], key: str, pooled: bool) -> list[float]:
    if pooled:
        return [v for t in trials for v in t[key]]
    return [t[key] for t in trials]


def lifecycle_table(results: dict[int, dict[str, list[dict[str, Any]]]],
                    args: argparse.Namespace) -> str:
    cols = [(n, s) for n in sorted(results) for s in SYSTEMS]
    head = "| metric | " + " | ".join(f"{s} N={n}" for n, s in cols) + " |"
    lines = [head, "|---|" + "---|" * len(cols)]
    for key, label, scale, digits, pooled in ROWS:
        cells = [med_range(_values(results[n][s], key, pooled), scale, digits) for n, s in cols]
        lines.append(f"| {label.format(idle=args.idle)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def relay_table(relay: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [(f"| path | req/s, 100 B, {args.relay_clients} clients | p50 (µs) | p99 (µs) | "
              "proxy CPU (µs/req) | MB/s, 1 MiB responses |"), "|---|---|---|---|---|---|"]
    for name, res in relay.items():
        lines.append(f"| {name} | {med_range(res['rps'], 1, 0)} | {res['p50_us']:.0f} | "
                     f"{res['p99_us']:.0f} | {med_range(res['cpu_us'], 1, 0)} | "
                     f"{med_range(res['mbps'], 1, 0)} |")
    return "\n".join(lines)


def targets(results: dict[int, dict[str, list[dict[str, Any]]]] | None,
            relay: dict[str, dict[str, Any]] | None) -> list[tuple[str, bool, str]]:
    """The issue's targets for janus at the largest N: (target, met, measured)."""
    out: list[tuple[str, bool, str]] = []
    if results and all(results[n].get("janus") for n in results):
        n = max(results)
        j, s = results[n]["janus"], results[n]["supervisord"]

        def med(trials: list[dict[str, Any]], key: str, pooled: bool = False) -> float:
            return statistics.median(_values(trials, key, pooled))

        rss_j, rss_s = med(j, "rss_mib"), med(s, "rss_mib")
        out.append((f"N={n}: RSS ≤ supervisord's", rss_j <= rss_s,
                    f"{rss_j:.1f} vs {rss_s:.1f} MiB"))
        for key, label, limit, scale, unit, pooled in [
            ("cold_s", "cold start to all answering ≤ 1.0 s", 1.0, 1000, "ms", False),
            ("kill_pid_s", "kill → new pid ≤ 50 ms", 0.050, 1000, "ms", True),
            ("kill_answer_s", "kill → answering ≤ 0.65 s", 0.65, 1000, "ms", True),
            ("stop_s", "stop all ≤ 0.3 s", 0.3, 1000, "ms", False),
            ("cli_ms", "status CLI ≤ 60 ms", 60.0, 1, "ms", True),
        ]:
            v = med(j, key, pooled)
            out.append((f"N={n}: {label}", v <= limit, f"{v * scale:.1f} {unit}"))
    if relay:
        jp, npp = relay["janus"]["p50_us"], relay["nginx"]["p50_us"]
        out.append(("relay p50 ≤ nginx's", jp <= npp, f"{jp:.0f} vs {npp:.0f} µs"))
        for key, label in (("rps", "req/s"), ("mbps", "MB/s")):
            jv, nv = statistics.median(relay["janus"][key]), statistics.median(relay["nginx"][key])
            out.append((f"relay {label} ≥ 0.8 × nginx's", jv >= 0.8 * nv,
                        f"{jv:.0f} vs {nv:.0f} ({jv / nv:.2f}×)"))
    return out


def run_lifecycle(args: argparse.Namespace) -> dict[int, dict[str, list[dict[str, Any]]]]:
    from lifecycle import bare_trial, janus_trial, supervisord_trial

    bin_dir = None if args.bare_only else ensure_supervisord()
    systems = ([] if args.bare_only else list(SYSTEMS)) + ([] if args.no_bare else ["bare"])
    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for n in args.tenants:
        results[n] = {s: [] for s in systems}
        with throwaway_users(n) as users:
            for trial in range(args.trials):
                for system in systems:
                    began = time.monotonic()
                    if system == "janus":
                        r = janus_trial(users, args)
                    elif system == "supervisord":
                        r = supervisord_trial(users, bin_dir, args)
                    else:
                        r = bare_trial(users, args)
                    results[n][system].append(r)
                    print(f"# N={n} trial {trial + 1}/{args.trials} {system}: "
                          f"cold {r['cold_s'] * 1000:.0f} ms, RSS {r.get('rss_mib', 0):.1f} MiB, "
                          f"stop {r.get('stop_s', 0) * 1000:.0f} ms "
                          f"({time.monotonic() - began:.0f} s)", file=sys.stderr, flush=True)
    return results


def bare_line(results: dict[int, dict[str, list[dict[str, Any]]]]) -> str:
    cells = [f"N={n} {med_range(_values(r['bare'], 'cold_s', False), 1000.0, 0)} ms"
             for n, r in sorted(results.items()) if r.get("bare")]
    return ("emulators alone (spawned by the benchmark as the same users, no supervisor), "
            "cold start → all answering: " + ", ".join(cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, nargs="+", default=[8, 32], help="values of N")
    parser.add_argument("--trials", type=int, default=3, help="trials per system and N")
    parser.add_argument("--idle", type=float, default=30.0, help="idle CPU window, seconds")
    parser.add_argument("--startup-delay", type=float, default=0.5,
                        help="JANUS_EMU_STARTUP_DELAY_S of every tenant")
    parser.add_argument("--kills", type=int, default=5, help="tenants killed per trial")
    parser.add_argument("--cli-runs", type=int, default=10, help="status CLI runs per trial")
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--relay-rounds", type=int, default=3)
    parser.add_argument("--relay-duration", type=float, default=5.0,
                        help="seconds of 100-byte load per path and round")
    parser.add_argument("--relay-big-duration", type=float, default=3.0,
                        help="seconds of 1 MiB responses per path and round")
    parser.add_argument("--relay-clients", type=int, default=8)
    parser.add_argument("--relay-profile", metavar="FILE",
                        help="py-spy (raw) the janus daemon during one 100-byte relay load")
    parser.add_argument("--no-bare", action="store_true",
                        help="skip the emulators-alone cold start (no supervisor) baseline")
    parser.add_argument("--bare-only", action="store_true",
                        help="lifecycle part: only the emulators-alone baseline")
    parser.add_argument("--no-lifecycle", action="store_true")
    parser.add_argument("--no-relay", action="store_true")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--install-only", action="store_true",
                        help="only install supervisord and nginx if missing (exit 0 or 77)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("compare: run as root (it creates throwaway users)", file=sys.stderr)
        return 1
    # SIGTERM/SIGHUP unwind like Ctrl-C so every finally (users, processes, dirs) runs.
    def unwind(signum: int, _frame: object) -> None:
        print(f"compare: {signal.Signals(signum).name}, cleaning up", file=sys.stderr,
              flush=True)
        sys.exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, unwind)

    try:
        if args.install_only:
            ensure_supervisord()
            ensure_nginx()
            return 0
        if not args.no_relay:
            ensure_nginx()
        precompile(REPO / "supervisor")  # supervisord's venv was compiled by pip on install
        results = None if args.no_lifecycle else run_lifecycle(args)
        if not args.no_relay:
            from relay import run as run_relay

            relay = run_relay(args)
        else:
            relay = None
    except Unavailable as exc:
        print(f"compare: UNAVAILABLE: {exc}", file=sys.stderr)
        return 77

    if results:
        print(f"janus-supervisord vs supervisord: {args.trials} alternating trials per system, "
              f"emulator startup delay {args.startup_delay:g} s; median (min–max)")
        print()
    if results and not args.bare_only:
        print(lifecycle_table(results, args))
        print()
    if results and not args.no_bare:
        print(bare_line(results))
        print()
    if relay:
        print(f"relay: {args.relay_rounds} alternating rounds, {args.relay_duration:g} s of "
              f"100-byte load and {args.relay_big_duration:g} s of 1 MiB responses each")
        print()
        print(relay_table(relay, args))
        print()
    for label, met, measured in targets(results, relay):
        print(f"- target {label}: {'met' if met else 'MISSED'} ({measured})")
    if args.json:
        Path(args.json).write_text(json.dumps({"lifecycle": results, "relay": relay,
                                               "args": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
