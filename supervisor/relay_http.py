"""HTTP framing for the tenant relay: request heads re-encoded for the backend, the ends of
responses, and model lists rewritten for a restricted tenant.

Requests are parsed with ``httptools``' request parser into events (a ``Head``, body bytes,
``END``); each response is watched by an ``Exchange`` built on its response parser, which only
marks where the response ends, except for a ``ListingExchange`` that buffers and filters a
model list.
"""

from __future__ import annotations

import json
from http import HTTPStatus

import httptools

from supervisor.policy import Listing, TenantPolicy

LISTING_LIMIT = 64 << 20  # a model list larger than this is not filtered but refused (502)
MAX_HEAD_BYTES = 64 << 10  # a request's target and headers larger than this get 431


def error_response(
    status: int, message: str, *, close: bool = True, head_only: bool = False
) -> bytes:
    """An Ollama-style JSON error response, closing the connection unless ``close`` is false.

    ``head_only`` (the answer to a HEAD request) leaves the body out but keeps its length.
    """
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: application/json; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
    )
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + (b"" if head_only else body)


# ---- requests -----------------------------------------------------------------------------


class Head:
    """A request head, filled in by ``RequestReader`` as it is parsed."""

    __slots__ = (
        "chunked",
        "expects_continue",
        "keep_alive",
        "length",
        "lines",
        "method",
        "target",
        "version",
    )

    def __init__(self) -> None:
        self.method = ""
        self.target = b""
        self.version = b"1.1"
        self.lines: list[bytes] = []  # header lines as they go to the server, Host left out
        self.keep_alive = True
        self.chunked = False
        self.length: int | None = None
        self.expects_continue = False

    def add_header(self, name: bytes, value: bytes) -> None:
        # Only these names matter here; comparing lengths first spares most lower() calls.
        if len(name) in _NOTED_LENGTHS:
            lower = name.lower()
            if lower == b"host":
                return  # replaced by ``Host: localhost``
            if lower == b"transfer-encoding" and b"chunked" in value.lower():
                self.chunked = True
            elif lower == b"content-length" and value.strip().isdigit():
                self.length = int(value)  # llhttp refuses a second or non-numeric one
            elif lower == b"expect" and value.lower() == b"100-continue":
                self.expects_continue = True
        self.lines.append(name + b": " + value + b"\r\n")

    @property
    def label(self) -> str:
        return f"{self.method} {self.target[:200].decode('latin-1')}"

    @property
    def body_pending(self) -> bool:
        return self.chunked or bool(self.length)

    def encode(self, *, drop_expect: bool = False) -> bytes:
        """The head for the backend: ``Host: localhost``, everything else as received."""
        target = self.target if self.target.startswith(b"/") else origin_form(self.target)
        lines = self.lines
        if drop_expect:
            lines = [line for line in lines if line[:7].lower() != b"expect:"]
        return b"".join(
            [
                b"%s %s HTTP/%s\r\n" % (self.method.encode(), target, self.version),
                *lines,
                b"Host: localhost\r\n\r\n",
            ]
        )

    def frame(self, body: bytes) -> bytes:
        """``body`` framed as the client framed it (one chunk when it was chunked)."""
        if not self.chunked:
            return body
        return (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"


def origin_form(target: bytes) -> bytes:
    """``/path?query`` of an absolute-form target: Go takes the host from such a URL, not from
    the ``Host`` header, so ``http://ollama/api/tags`` would get Ollama's 403."""
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        return target  # "*" of OPTIONS, or garbage the server will answer itself
    return (url.path or b"/") + (b"?" + url.query if url.query else b"")


_NOTED_LENGTHS = frozenset(
    len(name) for name in (b"host", b"expect", b"content-length", b"transfer-encoding")
)
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}

END = None  # event: the current request's message is complete
Event = Head | bytes | None


class HeadTooLarge(Exception):
    """A request head past ``MAX_HEAD_BYTES``: it is not parsed further (431)."""

    def __init__(self) -> None:
        super().__init__(
            f"the request line and headers are larger than {MAX_HEAD_BYTES} bytes; "
            "send fewer or shorter headers"
        )


class RequestReader:
    """Turns the client's byte stream into events: a ``Head``, body bytes, ``END``.

    A head is bounded: the bytes of its target and headers are counted as the callbacks deliver
    them, and the bytes of each read that finds a head still incomplete, since ``httptools``
    keeps a header that is not complete yet out of sight; past ``MAX_HEAD_BYTES``, parsing stops
    with ``HeadTooLarge``.
    """

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.events: list[Event] = []
        self.head_seen = False
        self.receiving: Head | None = None  # the head being received, until it is complete
        self._head = Head()
        self._size = 0  # bytes of its target and headers delivered so far
        self._read = 0  # bytes known to belong to it when it spans reads

    def on_message_begin(self) -> None:
        self._head = self.receiving = Head()
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._size += len(url)
        self._head.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._size += len(name) + len(value)
        self._head.add_header(name, value)

    def on_headers_complete(self) -> None:
        if self._size > MAX_HEAD_BYTES:
            raise HeadTooLarge
        parser, head = self.parser, self._head
        method = parser.get_method()
        head.method = _METHODS.get(method) or method.decode("latin-1")
        version = parser.get_http_version()
        head.version = b"1.1" if version == "1.1" else version.encode()
        head.keep_alive = parser.should_keep_alive()
        self.events.append(head)
        self.head_seen = True
        self.receiving = None

    def on_body(self, body: bytes) -> None:
        self.events.append(body)

    def on_message_complete(self) -> None:
        self.events.append(END)

    def feed(self, data: bytes) -> tuple[list[Event], Exception | None]:
        """Events parsed from ``data``, and the parse error that stopped it, if any."""
        error: Exception | None = None
        before = self.receiving
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            # httptools raises its own error; the callback's is its __context__.
            error = exc.__context__ if isinstance(exc.__context__, HeadTooLarge) else exc
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            error = exc
        if self.receiving is not None and error is None:
            error = self._still_receiving(self.receiving is before, len(data))
        events, self.events = self.events, []
        return events, error

    def _still_receiving(self, carried: bool, size: int) -> HeadTooLarge | None:
        """A read ended within a head: count what it holds so far (without over-counting)."""
        # A head that began in this read holds at least what the callbacks delivered; one that
        # began earlier holds all of this read too.
        self._read = self._read + size if carried else self._size
        return HeadTooLarge() if max(self._read, self._size) > MAX_HEAD_BYTES else None


# ---- responses ----------------------------------------------------------------------------


class Exchange:
    """One forwarded request, until its response has been passed on to the client.

    An ``httptools`` parser over a copy of the response bytes only marks where the response
    ends: ``on_body`` is not defined, so the body is never handed to Python.
    """

    def __init__(self, head_only: bool) -> None:
        self.head_only = head_only
        self.parser = httptools.HttpResponseParser(self)
        self.complete = False  # the whole response has arrived
        self.finished = False  # ... and was passed on (or the connection ended)
        self.responded = False  # some of it was sent to the client
        self.abandoned = False  # the request side gave up on it; drop the response
        self._interim = False
        self._at_end = False  # the parser found the end of the response itself

    def reusable(self) -> bool:
        """True when the next request's response can be tracked by this object (and its
        parser, which then starts at a message boundary): saves making a parser per request."""
        return self._at_end and self.finished and not self.head_only and not self.abandoned

    def restart(self) -> None:
        """Track the next response, after ``reusable`` said so."""
        self.complete = self.finished = self.responded = self._at_end = False

    def on_message_begin(self) -> None:
        self._at_end = False

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self._interim = True  # 100 Continue and the like; the real answer follows
        elif self.head_only:
            self.complete = True  # a response to HEAD has no body, whatever it declares

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        else:
            self.complete = self._at_end = True

    def feed(self, data: bytes) -> bytes:
        """Track ``data``; return what to send to the client."""
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.complete = True  # nothing more can be told about this response; pass it on
        return data


class ListingTooLarge(Exception):
    pass


class ListingExchange(Exchange):
    """A model list: buffered, filtered by the policy, re-sent with a new ``Content-Length``."""

    def __init__(self, policy: TenantPolicy, listing: Listing) -> None:
        super().__init__(head_only=False)
        self._policy = policy
        self._listing = listing
        self._raw = bytearray()
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._passthrough = False

    def reusable(self) -> bool:
        return False

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        encoded = any(
            n.lower() == b"content-encoding" and v.lower() != b"identity" for n, v in self._headers
        )
        if self.parser.get_status_code() != 200 or encoded:
            self._passthrough = True  # errors and compressed bodies go through untouched

    def on_body(self, body: bytes) -> None:
        if self._passthrough:
            return
        self._size += len(body)
        if self._size > LISTING_LIMIT:
            raise ListingTooLarge
        self._body.append(body)

    def feed(self, data: bytes) -> bytes:
        if self._passthrough and not self._raw:
            return super().feed(data)
        self._raw += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, ListingTooLarge):
                raise ListingTooLarge from exc
            self.complete = self._passthrough = True
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.complete = self._passthrough = True
        if self._passthrough:
            out, self._raw = bytes(self._raw), bytearray()
            return out
        return self._rewritten() if self.complete else b""

    def _rewritten(self) -> bytes:
        body = self._policy.filter_listing(self._listing, b"".join(self._body))
        if body is None:
            return bytes(self._raw)
        version = self.parser.get_http_version().encode()
        lines = [b"HTTP/%s %d %s" % (version, self.parser.get_status_code(), self._reason)]
        for name, value in self._headers:
            if name.lower() not in (b"content-length", b"transfer-encoding"):
                lines.append(name + b": " + value)
        lines.append(b"Content-Length: %d" % len(body))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body
