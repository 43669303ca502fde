"""units/: the service unit, sysusers.d and tmpfiles.d files pass systemd's own checks."""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from supervisor.config import TenantConfig

UNITS = Path(__file__).resolve().parents[1] / "units"
SERVICE = UNITS / "janus-supervisord.service"
SYSUSERS = UNITS / "sysusers.d" / "janus-supervisor.conf"
TMPFILES = UNITS / "tmpfiles.d" / "janus-supervisor.conf"
DAEMON = "/usr/local/bin/janus-supervisord"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed on this machine")
    return path


def service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(SERVICE.read_text())
    return parser["Service"]


def seconds(value: str) -> float:
    return float(value.removesuffix("s"))


def test_service_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    # verify insists that ExecStart's binary exists: point a copy at one that does.
    unit = tmp_path / SERVICE.name
    unit.write_text(SERVICE.read_text().replace(DAEMON, shutil.which("true") or "/bin/true"))

    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False
    )

    assert done.returncode == 0, done.stderr
    assert "janus-supervisord.service" not in done.stderr, done.stderr


def test_service_is_notify_with_reload_watchdog_and_directories() -> None:
    svc = service()

    assert svc["Type"] == "notify"
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["Restart"] == "on-failure"
    assert seconds(svc["WatchdogSec"]) > 0
    assert svc["ExecStart"].split()[0] == DAEMON
    assert {svc["RuntimeDirectory"], svc["StateDirectory"], svc["LogsDirectory"]} == {
        "janus-supervisor"
    }


def test_stop_timeout_outlasts_a_tenant_stop_with_default_knobs() -> None:
    fields = TenantConfig.model_fields
    longest_s = fields["drain_timeout_s"].default + fields["stop_timeout_s"].default

    assert seconds(service()["TimeoutStopSec"]) > longest_s + 15
    assert service()["KillMode"] == "mixed"


def test_start_timeout_outlasts_the_default_start_timeout() -> None:
    assert seconds(service()["TimeoutStartSec"]) > TenantConfig.model_fields[
        "start_timeout_s"].default


def world_root(tmp_path: Path) -> Path:
    """An alternative root with the snippets installed (systemd refuses a 0700 root)."""
    root = tmp_path / "root"
    for sub, src in (("sysusers.d", SYSUSERS), ("tmpfiles.d", TMPFILES)):
        (root / "etc" / sub).mkdir(parents=True)
        shutil.copy(src, root / "etc" / sub / src.name)
    for path in (tmp_path, root):
        path.chmod(0o755)
    return root


def test_sysusers_dry_run_creates_the_three_users_and_the_ops_group(tmp_path: Path) -> None:
    sysusers = tool("systemd-sysusers")
    root = world_root(tmp_path)

    done = subprocess.run([sysusers, f"--root={root}", "--dry-run"], capture_output=True,
                          text=True, check=False)

    assert done.returncode == 0, done.stderr
    for user in ("janus_admin", "janus_dev", "janus_qa"):
        assert f"Creating user '{user}'" in done.stdout + done.stderr
    assert "Creating group 'janus-ops'" in done.stdout + done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="tmpfiles chowns to the tenant users")
def test_tmpfiles_makes_private_stores_and_root_directories(tmp_path: Path) -> None:
    sysusers, tmpfiles = tool("systemd-sysusers"), tool("systemd-tmpfiles")
    root = world_root(tmp_path)
    subprocess.run([sysusers, f"--root={root}"], check=True, capture_output=True)

    done = subprocess.run([tmpfiles, "--create", f"--root={root}"], capture_output=True,
                          text=True, check=False)

    assert done.returncode == 0, done.stderr
    uids = {line.split(":")[0]: int(line.split(":")[2])
            for line in (root / "etc" / "passwd").read_text().splitlines()}
    for team in ("admin", "dev", "qa"):
        st = (root / "var" / "lib" / f"ollama_{team}").stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uids[f"janus_{team}"], 0o700)
    log_dir = (root / "var" / "log" / "janus-supervisor").stat()
    assert (log_dir.st_uid, stat.S_IMODE(log_dir.st_mode)) == (0, 0o750)
    assert (root / "run" / "janus-supervisor").is_dir()


def test_tmpfiles_and_unit_agree_on_the_directories() -> None:
    svc = service()
    paths = {line.split()[1] for line in TMPFILES.read_text().splitlines()
             if line.startswith("d ")}

    assert {f"/run/{svc['RuntimeDirectory']}", f"/var/lib/{svc['StateDirectory']}",
            f"/var/log/{svc['LogsDirectory']}"} <= paths
