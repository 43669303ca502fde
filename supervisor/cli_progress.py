"""Progress bars for ``janus-supervisorctl rebuild`` in a terminal.

While the rebuild request runs, a background thread follows the tenant's log stream and turns
the provisioner's progress notes (``[janus] upload of x.gguf: 40% (429496729 of 1073741824
bytes, 512.0 MiB/s)``) into one tqdm bar per step, with bytes and rate.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

from supervisor.ctl_client import ControlClient, CtlError

PROGRESS_NOTE = re.compile(
    r"\[janus\] (?P<what>.+?): (?P<percent>\d+)% \((?P<done>\d+) of (?P<total>\d+) bytes"
)


def parse_progress(line: str) -> tuple[str, int, int] | None:
    """``(step, done, total)`` from a provisioner progress note, else None."""
    match = PROGRESS_NOTE.search(line)
    if match is None:
        return None
    return match["what"], int(match["done"]), int(match["total"])


class _Bars:
    """One tqdm bar per progress step seen in the log."""

    def __init__(self) -> None:
        from tqdm import tqdm  # imported here: only rebuild in a terminal pays for it

        self._tqdm = tqdm
        self._bars: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._closed = False

    def update(self, what: str, done: int, total: int) -> None:
        with self._lock:
            if not self._closed:
                self._update(what, done, total)

    def _update(self, what: str, done: int, total: int) -> None:
        bar = self._bars.get(what)
        if bar is None:
            # A terminal that reports no size (0x0) gets 80x24: tqdm would hide every bar.
            size = shutil.get_terminal_size()
            bar = self._tqdm(total=total, desc=what, unit="B", unit_scale=True,
                             unit_divisor=1024, leave=True, ncols=size.columns,
                             nrows=size.lines)
            self._bars[what] = bar
        bar.update(max(0, done - bar.n))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for bar in self._bars.values():
                bar.close()


_CONNECT_WAIT_S = 2.0
_QUIET_S = 0.2
_DRAIN_MAX_S = 2.0


@contextlib.contextmanager
def rebuild_progress(client: ControlClient, logs_target: str) -> Iterator[None]:
    """Show progress bars from ``logs_target`` while the body runs.

    ``logs_target`` must ask for one old line (``lines=1``): its arrival shows the stream is
    open, so the body starts only once no new line can be missed. Afterwards the lines the
    daemon sent before its answer are drained until the stream has been quiet a moment.
    """
    bars = _Bars()
    stop, connected = threading.Event(), threading.Event()
    last_seen = [time.monotonic()]

    def follow() -> None:
        try:
            for record in client.stream(logs_target):
                last_seen[0] = time.monotonic()
                if not connected.is_set():
                    connected.set()
                    continue  # the old line that proves the stream is open
                if stop.is_set():
                    return
                parsed = parse_progress(str(record.get("line", "")))
                if parsed is not None:
                    bars.update(*parsed)
        except CtlError:
            pass  # progress is a courtesy: the rebuild's own answer says how it went
        finally:
            connected.set()

    thread = threading.Thread(target=follow, name="rebuild-progress", daemon=True)
    thread.start()
    connected.wait(_CONNECT_WAIT_S)
    try:
        yield
    finally:
        deadline = time.monotonic() + _DRAIN_MAX_S
        while time.monotonic() < deadline and time.monotonic() - last_seen[0] < _QUIET_S:
            time.sleep(0.02)
        stop.set()
        bars.close()
