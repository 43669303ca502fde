"""The HTTP/1.1 client of ``janus-supervisorctl`` on the daemon's control socket.

Standard library only: ``http.client`` would add some 14 ms of email and ssl imports to every
CLI run, and the daemon's own modules would add aiohttp and pydantic. One connection per
request; replies are JSON, or NDJSON in chunks for a followed log. Every failure becomes a
``CtlError`` carrying the exit code of ``supervisor.exitcodes``.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import socket
import stat
from collections.abc import Iterator
from typing import Any

from supervisor import __version__
from supervisor import exitcodes as ec

PROG = "janus-supervisorctl"
READ_TIMEOUT_S = 10.0
MAX_REPLY_BYTES = 16 * 1024 * 1024


class CtlError(Exception):
    """A failure shown as one line on stderr, ending the command with ``exit_code``."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


class Reply:
    """Status code and decoded JSON body of one control request."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body

    def error_text(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), str):
            return str(self.body["error"])
        return f"the daemon answered HTTP {self.status}"


class ControlClient:
    """Minimal HTTP/1.1 client for the control socket: one connection per request."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def call(
        self,
        method: str,
        target: str,
        *,
        timeout_s: float = READ_TIMEOUT_S,
        accept: tuple[int, ...] = (200, 503),
    ) -> Reply:
        """Send one request; map transport and HTTP errors to ``CtlError``.

        Returns the reply for a status in ``accept`` (503 is the not-ready answer of ``/ready``).
        """
        status, raw = self._exchange(method, target, timeout_s)
        return _checked(Reply(status, _decode(raw, f"{method} {target}")), accept)

    def stream(self, target: str) -> Iterator[Any]:
        """GET ``target`` and yield each NDJSON record of its chunked answer as it arrives.

        Ends when the daemon ends the stream; errors are ``CtlError`` as for ``call``.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(READ_TIMEOUT_S)
        try:
            self._connect(sock)
            sock.sendall(_request_bytes("GET", target))
            status, headers, rest = _read_head(sock)
            if status != 200:
                body = _read_body(sock, headers, rest)
                _checked(Reply(status, _decode(body, f"GET {target}")), (200,))
            sock.settimeout(None)  # new lines may take any time to come
            yield from _ndjson(_chunks(sock, bytearray(rest)))
        except OSError as exc:
            raise self._dropped(exc) from None
        finally:
            sock.close()

    def _dropped(self, exc: OSError) -> CtlError:
        return CtlError(
            ec.UNREACHABLE,
            f"the daemon at {self.socket_path} dropped the connection: {_reason(exc)}",
        )

    def _exchange(self, method: str, target: str, timeout_s: float) -> tuple[int, bytes]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        try:
            self._connect(sock)
            try:
                sock.sendall(_request_bytes(method, target))
                return _read_reply(sock)
            except TimeoutError:
                raise CtlError(
                    ec.UNREACHABLE,
                    f"the daemon at {self.socket_path} did not answer within {timeout_s:g} s",
                ) from None
            except OSError as exc:
                raise self._dropped(exc) from None
        finally:
            sock.close()

    def _connect(self, sock: socket.socket) -> None:
        path = self.socket_path
        try:
            sock.connect(path)
        except PermissionError:
            raise CtlError(ec.PERMISSION, _permission_message(path)) from None
        except FileNotFoundError:
            raise CtlError(
                ec.UNREACHABLE,
                f"cannot reach the daemon at {path}: no such file (is janus-supervisord running?)",
            ) from None
        except ConnectionRefusedError:
            raise CtlError(
                ec.UNREACHABLE,
                f"cannot reach the daemon at {path}: connection refused (stale socket; is "
                "janus-supervisord running?)",
            ) from None
        except (TimeoutError, BlockingIOError):
            raise CtlError(
                ec.UNREACHABLE, f"cannot reach the daemon at {path}: it accepts no connections"
            ) from None
        except OSError as exc:
            raise CtlError(
                ec.UNREACHABLE, f"cannot reach the daemon at {path}: {_reason(exc)}"
            ) from None


def _request_bytes(method: str, target: str) -> bytes:
    return (
        f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n"
        f"User-Agent: {PROG}/{__version__}\r\nAccept: application/json\r\n"
        + ("Content-Length: 0\r\n" if method == "POST" else "")
        + "Connection: close\r\n\r\n"
    ).encode("ascii")


def _decode(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise CtlError(ec.FAILED, f"the daemon sent a reply that is not JSON ({what})") from None


def _checked(reply: Reply, accept: tuple[int, ...]) -> Reply:
    """``reply`` when its status is accepted, else the ``CtlError`` for its status."""
    if reply.status in accept:
        return reply
    if reply.status == 403:
        raise CtlError(ec.PERMISSION, reply.error_text())
    if reply.status in (400, 404):
        raise CtlError(ec.USAGE, reply.error_text())
    raise CtlError(ec.FAILED, reply.error_text())


def _read_reply(sock: socket.socket) -> tuple[int, bytes]:
    """Read one HTTP response; return its status code and body."""
    status, headers, rest = _read_head(sock)
    return status, _read_body(sock, headers, rest)


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, lower-cased headers and the bytes received after the head."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        if not _receive_into(sock, data):
            raise ConnectionResetError("connection closed before a complete reply")
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise CtlError(ec.FAILED, f"the daemon sent a malformed reply: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


def _read_body(sock: socket.socket, headers: dict[str, str], rest: bytes) -> bytes:
    body = bytearray(rest)
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(body) < length:
            if not _receive_into(sock, body):
                raise ConnectionResetError("connection closed in the middle of a reply")
        return bytes(body[:length])
    while _receive_into(sock, body):
        pass  # no length given: the reply ends when the daemon closes the connection
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return _dechunk(bytes(body))
    return bytes(body)


def _chunks(sock: socket.socket, buffer: bytearray) -> Iterator[bytes]:
    """Decode a chunked body as it arrives; ends at the last chunk or end of stream."""
    while True:
        while b"\r\n" not in buffer:
            if not _receive_stream(sock, buffer):
                return
        size_line, _, rest = bytes(buffer).partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            return
        while len(rest) < size + 2:
            if not _receive_stream(sock, buffer):
                return
            rest = bytes(buffer).partition(b"\r\n")[2]
        yield rest[:size]
        buffer[:] = rest[size + 2 :]


def _receive_stream(sock: socket.socket, buffer: bytearray) -> bool:
    chunk = sock.recv(65536)
    buffer += chunk
    return bool(chunk)


def _ndjson(chunks: Iterator[bytes]) -> Iterator[Any]:
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)


def _receive_into(sock: socket.socket, buffer: bytearray) -> bool:
    """Append what the socket has to ``buffer``; False at end of stream."""
    chunk = sock.recv(65536)
    if len(buffer) + len(chunk) > MAX_REPLY_BYTES:
        raise CtlError(ec.FAILED, f"the daemon's reply exceeds {MAX_REPLY_BYTES} bytes")
    buffer += chunk
    return bool(chunk)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


def _permission_message(path: str) -> str:
    """One line naming the socket, its owner, group and mode, and the way in (case C6)."""
    try:
        st = os.stat(path)
    except OSError:
        return (
            f"permission denied on the control socket {path}; a directory above it is closed "
            "to you: run as root (sudo) or ask an administrator for access"
        )
    owner, group = _user_name(st.st_uid), _group_name(st.st_gid)
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWGRP and st.st_gid != 0:
        hint = f"join group {group} (sudo usermod -aG {group} $USER, then log in again) or use sudo"
    else:
        hint = "only its owner may connect: run as root (sudo)"
    return (
        f"permission denied on the control socket {path} ({owner}:{group}, mode {mode:04o}); {hint}"
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc) or type(exc).__name__).lower()
