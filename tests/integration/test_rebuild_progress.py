"""``janus-supervisorctl rebuild`` in a terminal shows upload progress as a bar (issue 5)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

from tests.integration.harness import REPO, Deployment, needs_root

pytestmark = needs_root

BIG_MIB = 48


def big_gguf(directory: Path) -> Path:
    """The demo GGUF padded to BIG_MIB MiB (the server checks the header, not the tail)."""
    path = directory / "janus-pro-7b-big.gguf"
    with open(path, "wb") as out:
        out.write((REPO / "conf" / "demo" / "janus-pro-7b-demo.gguf").read_bytes())
        out.truncate(BIG_MIB << 20)
    return path


def run_in_terminal(argv: list[str], timeout_s: float = 120) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as stdout/stderr; return its code and output."""
    main, child = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=child, stderr=child,
                            cwd=REPO)
    os.close(child)
    output = b""
    while True:
        ready, _, _ = select.select([main], [], [], timeout_s)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    return proc.wait(timeout=30), output.decode(errors="replace")


def test_rebuild_in_a_terminal_shows_upload_bytes_and_rate(deployment: Deployment) -> None:
    for role in ("dev", "qa"):
        del deployment.config["tenants"][role]
    gguf = big_gguf(deployment.root)
    deployment.config["base_models"]["janus-pro-7b"]["gguf"] = str(gguf)
    deployment.start()
    deployment.wait_ready(("admin",))
    store = deployment.store_of("admin")
    # Take the base model out of the store, so that the rebuild must upload it again.
    (store / "manifests" / "registry.ollama.ai" / "library" / "janus-pro-7b" / "latest").unlink()
    for blob in (store / "blobs").iterdir():
        if blob.stat().st_size >= BIG_MIB << 20:
            blob.unlink()

    code, output = run_in_terminal([sys.executable, "-m", "supervisor.cli", "--socket",
                                    str(deployment.control), "rebuild", "admin"])

    assert code == 0, output
    assert "uploading janus-pro-7b-big.gguf" in output
    assert "48.0M/48.0M" in output or "48.0MB/48.0MB" in output, output
    assert "B/s" in output
    assert "admin: rebuilt every variant" in output
