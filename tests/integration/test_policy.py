"""Tenant API policy at the sockets of the real daemon, with the official ollama client (issue 7).

The tutorial's roles come from conf/janus-supervisor.yaml: admin may do everything; dev may
read and infer with its own variant, images included; qa the same without images.
"""

from __future__ import annotations

import base64
import hashlib
import pwd
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import httpx
import ollama
import psutil
import pytest

from tests.integration.harness import Deployment, needs_root, raw_http

pytestmark = needs_root

IMAGE = base64.b64encode(b"\x89PNG\r\n\x1a\n not really a picture").decode()
GiB = 1 << 30
RSS_GROWTH_LIMIT = 8 << 20


def client_for(dep: Deployment, role: str) -> ollama.Client:
    transport = httpx.HTTPTransport(uds=str(dep.socket_of(role)))
    return ollama.Client(host="http://localhost", transport=transport, timeout=30)


def manifest(dep: Deployment, role: str, model: str) -> Path:
    return dep.store_of(role) / "manifests" / "registry.ollama.ai" / "library" / model / "latest"


@pytest.fixture
def running(deployment: Deployment) -> Deployment:
    deployment.start()
    deployment.wait_ready()
    return deployment


def refused(client_call: Callable[[], object]) -> ollama.ResponseError:
    with pytest.raises(ollama.ResponseError) as caught:
        client_call()
    return caught.value


def test_qa_chat_with_an_image_is_refused_naming_the_rule(running: Deployment) -> None:
    with client_for(running, "qa") as qa:
        error = refused(
            lambda: qa.chat(
                model="janus-pro-7b-qa",
                messages=[{"role": "user", "content": "what is this?", "images": [IMAGE]}],
            )
        )

    assert error.status_code == 400
    assert error.error.startswith("tenant qa: images are not allowed (tenants.qa.policy.images")


def test_qa_cannot_name_the_base_model(running: Deployment) -> None:
    with client_for(running, "qa") as qa:
        error = refused(
            lambda: qa.chat(model="janus-pro-7b", messages=[{"role": "user", "content": "hi"}])
        )
        shown = refused(lambda: qa.show("janus-pro-7b"))

    assert error.status_code == 403
    assert "model 'janus-pro-7b' is not allowed here (allowed: janus-pro-7b-qa)" in error.error
    assert shown.status_code == 403


def test_qa_delete_is_refused_and_the_model_stays(running: Deployment) -> None:
    with client_for(running, "qa") as qa:
        error = refused(lambda: qa.delete("janus-pro-7b-qa"))

    assert error.status_code == 403
    assert "DELETE /api/delete is a manage operation" in error.error
    assert manifest(running, "qa", "janus-pro-7b-qa").is_file()


def test_dev_create_is_refused(running: Deployment) -> None:
    with client_for(running, "dev") as dev:
        error = refused(
            lambda: dev.create(
                model="janus-pro-7b-dev", from_="janus-pro-7b", system="draw pictures"
            )
        )

    assert error.status_code == 403
    assert error.error.startswith("tenant dev: POST /api/create is a manage operation")


def test_dev_chat_with_an_image_is_answered(running: Deployment) -> None:
    with client_for(running, "dev") as dev:
        reply = dev.chat(
            model="janus-pro-7b-dev",
            messages=[{"role": "user", "content": "describe this", "images": [IMAGE]}],
        )

    assert "model=janus-pro-7b-dev" in reply.message.content
    assert "images=1" in reply.message.content


def test_admin_may_create_copy_and_delete(running: Deployment) -> None:
    with client_for(running, "admin") as admin:
        created = admin.create(model="scratch", from_="janus-pro-7b", system="terse")
        copied = admin.copy("scratch", "scratch-copy")
        made = [manifest(running, "admin", m).is_file() for m in ("scratch", "scratch-copy")]
        deleted = [admin.delete(m).status for m in ("scratch", "scratch-copy")]

    assert created.status == "success" and copied.status == "success"
    assert made == [True, True]
    assert deleted == ["success", "success"]
    assert not manifest(running, "admin", "scratch").exists()


def test_model_lists_show_only_what_the_socket_allows(running: Deployment) -> None:
    with client_for(running, "qa") as qa, client_for(running, "admin") as admin:
        qa_names = [m.model for m in qa.list().models]
        admin_names = sorted(m.model or "" for m in admin.list().models)

    assert qa_names == ["janus-pro-7b-qa:latest"]
    assert admin_names == ["janus-pro-7b-admin:latest", "janus-pro-7b:latest"]


def test_refusals_are_counted_and_logged_with_the_peer_uid(running: Deployment) -> None:
    qa_user = pwd.getpwnam(running.users["qa"])
    script = (
        "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
        "s.sendall(b'DELETE /api/delete HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 2\\r\\n"
        "Connection: close\\r\\n\\r\\n{}'); print(s.recv(4096).decode())"
    )

    answer = subprocess.run(
        ["/usr/bin/python3", "-c", script, str(running.socket_of("qa"))],
        user=qa_user.pw_uid,
        group=qa_user.pw_gid,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    metrics = raw_http(
        running.control, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    ).decode()

    assert answer.startswith("HTTP/1.1 403")
    assert (
        f"tenant qa: refused DELETE /api/delete from uid {qa_user.pw_uid} (rule operation)"
        in running.log_text()
    )
    assert 'janus_policy_refusals_total{rule="operation",tenant="qa"} 1.0' in metrics


def pattern_blocks(total: int, block: int = 1 << 20) -> Iterator[bytes]:
    data = bytes(range(256)) * (block // 256)
    for _ in range(total // block):
        yield data


class PeakRss:
    """Samples a process's resident memory in a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.baseline = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_one_gib_blob_streams_through_admin_socket_in_flat_memory(running: Deployment) -> None:
    if shutil.disk_usage(running.root).free < 3 * GiB:
        pytest.skip(f"needs 3 GiB free under {running.root} for the emulator's blob store")
    digest = hashlib.sha256()
    for block in pattern_blocks(GiB):
        digest.update(block)
    name = f"sha256:{digest.hexdigest()}"
    assert running.proc is not None
    transport = httpx.HTTPTransport(uds=str(running.socket_of("admin")))

    with (
        PeakRss(running.proc.pid) as rss,
        httpx.Client(transport=transport, base_url="http://localhost", timeout=300) as http,
    ):
        answer = http.post(f"/api/blobs/{name}", content=pattern_blocks(GiB))

    assert answer.status_code == 201, answer.text
    blob = running.store_of("admin") / "blobs" / name.replace(":", "-")
    assert blob.stat().st_size == GiB
    assert rss.peak - rss.baseline < RSS_GROWTH_LIMIT, (rss.baseline, rss.peak)
