"""Base model sources through the real daemon, as root with real users (issue 5)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import ollama

from tests.emulator_fixtures import start_emulator
from tests.integration.harness import ROLES, Deployment, control_get, deadline_loop, needs_root

pytestmark = needs_root

BASE = "janus-pro-7b"


def make_shared_store(root: Path) -> Path:
    """What an admin does once: import the base into a store the tenants can only read."""
    admin = start_emulator(root / "shared-admin")
    try:
        admin.create_demo_base(BASE)
    finally:
        admin.close()
    for path in [admin.models, *admin.models.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return admin.models


def tenant_log(dep: Deployment, role: str) -> str:
    return (Path(dep.config["log_dir"]) / f"{role}.log").read_text(errors="replace")


def server_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def blobs(store: Path) -> dict[str, os.stat_result]:
    return {p.name: p.stat() for p in (store / "blobs").iterdir()}


def wait_state(dep: Deployment, role: str, state: str, timeout_s: float = 60) -> dict:
    for _ in deadline_loop(timeout_s, 0.05):
        status = dep.status(role)
        if status["state"] == state:
            return status
    raise AssertionError("unreachable")


def test_shared_store_base_is_hard_linked_into_every_tenant(deployment: Deployment) -> None:
    shared = make_shared_store(deployment.root)
    deployment.config["base_models"] = {BASE: {"shared_store": str(shared),
                                               "sources": ["store", "shared"]}}

    deployment.start()
    deployment.wait_ready()

    theirs = blobs(shared)
    for role in ROLES:
        ours = blobs(deployment.store_of(role))
        assert all(ours[name].st_ino == theirs[name].st_ino for name in theirs), role
        manifest = (deployment.store_of(role) / "manifests/registry.ollama.ai/library" / BASE
                    / "latest")
        assert manifest.stat().st_uid == deployment.status(role)["uid"]
        assert f"base model {BASE}: available (source shared)" in tenant_log(deployment, role)
        assert server_env(deployment.pid_of(role))["OLLAMA_NOPRUNE"] == "1"


def test_isolated_tenant_without_a_source_is_degraded_and_never_pulls(
        deployment: Deployment) -> None:
    deployment.config["base_models"] = {BASE: {"sources": ["store", "pull"]}}

    deployment.start()
    status = wait_state(deployment, "dev", "degraded")

    error = status["last_error"]
    assert f"base model '{BASE}' is not available" in error
    assert "store: not in the tenant's store" in error
    assert "pull: tenant dev is network: isolated; no registry pull" in error
    assert "/api/pull" not in tenant_log(deployment, "dev")
    assert status["restarts"] == 0 and status["pid"] == deployment.pid_of("dev")


def test_rebuild_after_the_shared_store_is_filled_makes_the_tenant_ready(
        deployment: Deployment) -> None:
    made = make_shared_store(deployment.root)
    shared = deployment.root / "shared"
    deployment.config["base_models"] = {BASE: {"shared_store": str(shared),
                                               "sources": ["store", "shared"]}}
    deployment.start()
    before = wait_state(deployment, "qa", "degraded")
    assert f"{shared}/manifests" in before["last_error"]
    shutil.copytree(made, shared)

    code, after = control_get(deployment.control, "/v1/tenants/qa/rebuild", "POST")

    assert (code, after["state"]) == (200, "ready"), after
    assert after["pid"] == before["pid"]


def test_official_client_create_against_the_admin_socket(deployment: Deployment) -> None:
    deployment.start()
    deployment.wait_ready(("admin",))
    transport = httpx.HTTPTransport(uds=str(deployment.socket_of("admin")))
    client = ollama.Client(host="http://localhost", transport=transport, timeout=60)

    try:
        result = client.create(model="wire-check", from_=f"{BASE}:latest", system="Be brief.",
                               parameters={"num_ctx": 1024, "stop": ["<|end|>"]})
        shown = client.show("wire-check")
    finally:
        transport.close()

    assert result.status == "success"
    assert "SYSTEM Be brief." in (shown.modelfile or "")
    assert "num_ctx" in (shown.parameters or "") and shown.details.parent_model


def test_variant_removed_from_config_is_left_in_the_store_and_logged(
        deployment: Deployment) -> None:
    deployment.start()
    deployment.wait_ready(("admin",))
    variant = deployment.config["tenants"]["admin"]["variants"][0]["name"]
    deployment.config["tenants"]["admin"]["variants"] = []
    deployment.write()
    assert control_get(deployment.control, "/v1/reload", "POST")[0] == 200

    code, _ = control_get(deployment.control, "/v1/tenants/admin/rebuild", "POST")

    assert code == 200
    assert f"variant {variant}: no longer in the config; left in the store" in tenant_log(
        deployment, "admin")
    manifest = (deployment.store_of("admin") / "manifests/registry.ollama.ai/library"
                / variant / "latest")
    assert manifest.is_file()
