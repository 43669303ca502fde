"""The rebuild progress bars read the provisioner's own progress notes."""

from __future__ import annotations

from pathlib import Path

from supervisor.cli_progress import parse_progress
from supervisor.logs import TenantLog
from supervisor.provision import Progress


def test_progress_notes_of_the_provisioner_parse(tmp_path: Path) -> None:
    log = TenantLog("dev", tmp_path, echo=False)
    steps = iter([0.0, 1.0, 2.0])
    progress = Progress(log.note, "uploading base.gguf", 1000, clock=lambda: next(steps))

    progress.update(500)
    line = log.tail(1)[0]
    log.close()

    assert parse_progress(line) == ("uploading base.gguf", 500, 1000)


def test_other_lines_are_not_progress() -> None:
    assert parse_progress("2026-12-03T18:00:00 [janus] variant x: up to date") is None
    assert parse_progress('[GIN] 2026/12/03 | 200 | GET "/"') is None
