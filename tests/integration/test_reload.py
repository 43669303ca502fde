"""Reload through the real daemon, as root with real users (case C12, issue 6)."""

from __future__ import annotations

import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import (
    REPO,
    Deployment,
    create_user,
    deadline_loop,
    install_emulator,
    make_world_dir,
    needs_root,
    tear_down,
    tutorial_config,
)

pytestmark = needs_root

VARIANT = "janus-pro-7b-prod"


def tenant_entry(root: Path, role: str, user: str) -> dict[str, Any]:
    return {
        "user": user,
        "models_dir": str(root / "stores" / role),
        "socket": {"path": str(root / "run" / f"{role}.sock"), "mode": "0660"},
        "start_timeout_s": 30,
        "probe_period_s": 1,
        "probe_timeout_s": 2,
        "stop_timeout_s": 3,
        "backoff_initial_s": 0.2,
    }


@pytest.fixture
def stages() -> Iterator[Deployment]:
    """Tenants dev, stage and prod (prod with an inline variant); a user qa for later."""
    root = make_world_dir("janus-reload")
    emulator = install_emulator(root)
    tag = secrets.token_hex(3)
    users = {role: f"jr{tag}{role[0]}" for role in ("dev", "stage", "prod", "qa")}
    for name in users.values():
        create_user(name)
    config = tutorial_config(root, {"admin": users["dev"], "dev": users["dev"],
                                    "qa": users["dev"]}, emulator)
    config["tenants"] = {role: tenant_entry(root, role, users[role])
                         for role in ("dev", "stage", "prod")}
    config["tenants"]["dev"]["variants"] = [
        {"name": "janus-pro-7b-dev", "modelfile": str(REPO / "conf/modelfiles/dev.Modelfile")}]
    config["tenants"]["prod"]["variants"] = [
        {"name": VARIANT, "from": "janus-pro-7b", "parameters": {"num_ctx": 2048}}]
    dep = Deployment(root, root / "janus.yaml", config, users)
    try:
        yield dep
    finally:
        tear_down(dep)


def manifest(dep: Deployment, role: str, model: str) -> bytes:
    path = dep.store_of(role) / "manifests" / "registry.ollama.ai" / "library" / model / "latest"
    return path.read_bytes()


def shown_parameters(dep: Deployment, role: str, model: str) -> str:
    transport = httpx.HTTPTransport(uds=str(dep.socket_of(role)))
    with httpx.Client(transport=transport, timeout=30) as client:
        reply = client.post("http://localhost/api/show", json={"model": model})
    reply.raise_for_status()
    return str(reply.json().get("parameters", ""))


def pids(dep: Deployment, roles: tuple[str, ...]) -> dict[str, int]:
    return {role: dep.pid_of(role) for role in roles}


def plan_rows(out: str) -> dict[str, list[str]]:
    """TENANT -> [ACTION, ...] from the human reload table."""
    rows = [line.split(None, 2) for line in out.splitlines()]
    return {row[0]: row[1:] for row in rows if row and row[0] in ("dev", "stage", "prod", "qa")}


def test_case_c12_reload_touches_only_what_changed(stages: Deployment) -> None:
    dep = stages
    dep.start()
    dep.wait_ready(("dev", "stage", "prod"))
    before = pids(dep, ("dev", "stage", "prod"))
    prod_manifest = manifest(dep, "prod", VARIANT)
    dep.config["tenants"]["dev"]["probe_period_s"] = 2
    dep.config["tenants"]["prod"]["variants"][0]["parameters"]["num_ctx"] = 4096
    dep.config["tenants"]["qa"] = tenant_entry(dep.root, "qa", dep.users["qa"])
    dep.write()

    dry = dep.ctl("reload", "--dry-run")

    assert dry.returncode == 0, dry.stderr
    assert plan_rows(dry.stdout) == {
        "dev": ["apply", "probe_period_s 1.0 -> 2.0"],
        "stage": ["keep", "-"],
        "prod": ["rebuild", f"variant {VARIANT} changed (parameters)"],
        "qa": ["start", "new tenant"],
    }
    assert manifest(dep, "prod", VARIANT) == prod_manifest
    assert "qa" not in [t["name"] for t in dep.status()["tenants"]]

    done = dep.ctl("reload")

    assert done.returncode == 0, done.stdout + done.stderr
    assert pids(dep, ("dev", "stage", "prod")) == before
    assert manifest(dep, "prod", VARIANT) != prod_manifest
    assert "num_ctx                        4096" in shown_parameters(dep, "prod", VARIANT)
    dep.wait_ready(("dev", "stage", "prod", "qa"))
    assert dep.status("dev")["ready"] and dep.status("prod")["ready"]


def test_invalid_file_changes_nothing_and_names_every_error(stages: Deployment) -> None:
    dep = stages
    dep.start()
    dep.wait_ready(("dev", "stage", "prod"))
    before = pids(dep, ("dev", "stage", "prod"))
    dep.config["tenants"]["dev"]["probe_period_s"] = -1
    dep.config["tenants"]["stage"]["user"] = "root"
    dep.config["tenants"]["qa"] = tenant_entry(dep.root, "qa", dep.users["qa"])
    dep.write()

    done = dep.ctl("reload")

    assert done.returncode == 1
    errors = done.stderr.splitlines()
    assert any(f"{dep.config_path}:" in e and "tenants.dev.probe_period_s: -1" in e
               for e in errors), errors
    assert any("tenants.stage.user: 'root'" in e for e in errors), errors
    assert "nothing was changed" in errors[-1]
    assert pids(dep, ("dev", "stage", "prod")) == before
    assert [t["name"] for t in dep.status()["tenants"]] == ["dev", "stage", "prod"]


def test_sighup_restarts_rebinds_and_removes(stages: Deployment) -> None:
    dep = stages
    dep.start()
    dep.wait_ready(("dev", "stage", "prod"))
    before = pids(dep, ("dev", "stage", "prod"))
    old_dev_socket, prod_store = dep.socket_of("dev"), dep.store_of("prod")
    dep.config["tenants"]["stage"]["env"] = {"OLLAMA_KEEP_ALIVE": "1m"}
    dep.config["tenants"]["dev"]["socket"]["path"] = str(dep.root / "run" / "dev-new.sock")
    del dep.config["tenants"]["prod"]
    dep.write()
    assert dep.proc is not None

    dep.proc.send_signal(signal.SIGHUP)

    for _ in deadline_loop(60):
        if "SIGHUP: reload applied" in dep.log_text():
            break
    after = dep.status()
    assert [t["name"] for t in after["tenants"]] == ["dev", "stage"]
    assert dep.pid_of("dev") == before["dev"]
    assert dep.pid_of("stage") != before["stage"]
    assert not old_dev_socket.exists()
    transport = httpx.HTTPTransport(uds=str(dep.socket_of("dev")))
    with httpx.Client(transport=transport, timeout=30) as client:
        assert client.get("http://localhost/api/tags").status_code == 200
    assert (prod_store / "manifests").is_dir()  # a removed tenant's store stays
    assert not (dep.root / "run" / "prod.sock").exists()
