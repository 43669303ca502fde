"""The tutorial's admin/dev/qa deployment, end to end, as root with real users (issue 2)."""

from __future__ import annotations

import json
import os
import pwd
import signal
import stat
from pathlib import Path

import httpx
import ollama
import pytest

from supervisor.modelfile import parse_modelfile
from tests.integration.harness import (
    REPO,
    ROLES,
    Deployment,
    deadline_loop,
    needs_root,
    raw_http,
    user_processes,
)

pytestmark = needs_root
OTHERS = ("admin", "qa")


def proc_ids(pid: int) -> dict[str, list[int]]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            fields[key] = [int(v) for v in value.split()]
    return fields


def client_for(dep: Deployment, role: str) -> ollama.Client:
    transport = httpx.HTTPTransport(uds=str(dep.socket_of(role)))
    return ollama.Client(host="http://localhost", transport=transport, timeout=30)


def manifest_exists(store: Path, model: str) -> bool:
    return (store / "manifests" / "registry.ollama.ai" / "library" / model / "latest").is_file()


@pytest.fixture
def running(deployment: Deployment) -> Deployment:
    deployment.start()
    deployment.wait_ready()
    return deployment


def test_three_tenants_run_as_their_own_users(running: Deployment) -> None:
    for role in ROLES:
        user = pwd.getpwnam(running.users[role])
        ids = proc_ids(running.pid_of(role))

        assert ids["Uid"] == [user.pw_uid] * 4
        assert ids["Gid"] == [user.pw_gid] * 4
        assert set(ids["Groups"]) <= set(os.getgrouplist(user.pw_name, user.pw_gid))


def test_each_store_is_private_to_its_tenant(running: Deployment) -> None:
    for role in ROLES:
        st = running.store_of(role).stat()

        assert st.st_uid == pwd.getpwnam(running.users[role]).pw_uid
        assert stat.S_IMODE(st.st_mode) == 0o700


def test_dev_variant_exists_only_in_dev_store(running: Deployment) -> None:
    stores = {role: running.store_of(role) for role in ROLES}

    assert manifest_exists(stores["dev"], "janus-pro-7b-dev")
    assert not manifest_exists(stores["admin"], "janus-pro-7b-dev")
    assert not manifest_exists(stores["qa"], "janus-pro-7b-dev")


def show_raw(dep: Deployment, role: str, model: str) -> dict[str, object]:
    transport = httpx.HTTPTransport(uds=str(dep.socket_of(role)))
    with httpx.Client(transport=transport, base_url="http://localhost") as http:
        answer = http.post("/api/show", json={"model": model}, timeout=30)
    answer.raise_for_status()
    return answer.json()  # type: ignore[no-any-return]


def test_chat_through_dev_socket_uses_dev_system_prompt(running: Deployment) -> None:
    wanted = parse_modelfile(REPO / "conf" / "modelfiles" / "dev.Modelfile").system
    with client_for(running, "dev") as client:
        reply = client.chat(model="janus-pro-7b-dev",
                            messages=[{"role": "user", "content": "describe this"}])

    assert wanted and "image" in wanted.lower()
    assert show_raw(running, "dev", "janus-pro-7b-dev")["system"] == wanted
    assert "model=janus-pro-7b-dev" in reply.message.content
    assert f"system={json.dumps(wanted)}" in reply.message.content


def test_qa_variant_carries_num_ctx_2048(running: Deployment) -> None:
    with client_for(running, "qa") as client:
        shown = client.show("janus-pro-7b-qa")
        reply = client.generate(model="janus-pro-7b-qa", prompt="hi")

    assert "num_ctx" in (shown.parameters or "") and "2048" in (shown.parameters or "")
    assert '"num_ctx":2048' in reply.response


def test_foreign_host_header_is_not_refused(running: Deployment) -> None:
    request = b"GET /api/version HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
    answer = raw_http(running.socket_of("dev"), request)

    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"version"' in answer


def test_restart_dev_gives_new_pid_without_recreating_variant(running: Deployment) -> None:
    before = {role: running.pid_of(role) for role in ROLES}
    manifest = (running.store_of("dev") / "manifests" / "registry.ollama.ai" / "library" /
                "janus-pro-7b-dev" / "latest")
    mtime = manifest.stat().st_mtime_ns

    result = running.ctl("restart", "dev")
    running.wait_ready()

    assert result.returncode == 0, result.stderr
    assert running.pid_of("dev") != before["dev"]
    assert manifest.stat().st_mtime_ns == mtime
    assert {r: running.pid_of(r) for r in OTHERS} == {r: before[r] for r in OTHERS}


def test_killed_dev_server_comes_back_by_itself(running: Deployment) -> None:
    before = {role: running.pid_of(role) for role in ROLES}

    os.kill(before["dev"], signal.SIGKILL)
    for _ in deadline_loop(30, 0.05):
        status = running.status("dev")
        if status["ready"] and status["pid"] != before["dev"]:
            break

    assert running.status("dev")["restarts"] >= 1
    assert running.status("dev")["last_exit"]["signal"] == "SIGKILL"
    assert {r: running.pid_of(r) for r in OTHERS} == {r: before[r] for r in OTHERS}


def test_status_cli_shows_all_ready(running: Deployment) -> None:
    result = running.ctl("status")

    assert result.returncode == 0, result.stderr
    for role in ROLES:
        assert role in result.stdout
    assert result.stdout.count("ready") >= 3


def test_sigterm_leaves_no_process_and_no_socket(running: Deployment) -> None:
    sockets = [running.socket_of(r) for r in ROLES] + [running.control]

    code = running.stop()

    assert code == 0, running.log_text()[-2000:]
    for role in ROLES:
        assert user_processes(running.users[role]) == []
    assert [s for s in sockets if s.exists()] == []


def test_server_environment_is_clean(deployment: Deployment) -> None:
    """Case C7: root's environment does not leak into a tenant's server."""
    user = pwd.getpwnam(deployment.users["dev"])
    dump_dir = deployment.root / "dump"
    dump_dir.mkdir()
    os.chown(dump_dir, user.pw_uid, user.pw_gid)
    dump = dump_dir / "env.json"
    deployment.config["tenants"]["dev"]["env"] = {"JANUS_EMU_DUMP": str(dump)}
    deployment.extra_env = {"HOME": "/root", "SECRET_TOKEN": "x", "SUDO_USER": "y"}
    deployment.start()
    deployment.wait_ready()

    seen = json.loads(dump.read_text())
    env = seen["env"]

    assert set(env) == {"PATH", "LANG", "HOME", "USER", "LOGNAME", "OLLAMA_MODELS",
                        "OLLAMA_HOST", "JANUS_EMU_DUMP"}
    assert env["USER"] == env["LOGNAME"] == user.pw_name
    assert env["HOME"] != "/root" and Path(env["HOME"]).stat().st_uid == user.pw_uid
    assert env["OLLAMA_MODELS"] == str(deployment.store_of("dev"))
    assert env["OLLAMA_HOST"].startswith("127.0.0.1:")
    assert set(seen["groups"]) <= set(os.getgrouplist(user.pw_name, user.pw_gid))
