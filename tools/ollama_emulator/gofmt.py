"""Go-compatible text: JSON encoding, ``%v``/``%#v`` values, times, durations, errno text.

Ollama is written in Go, so clients and supervisors see Go's formatting. These helpers
reproduce the parts that are visible on the wire, in the store and in the logs.
"""

from __future__ import annotations

import decimal
import math
import os
import re
import time
from typing import Any

_HTML_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_QUOTE_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def go_json(value: Any) -> str:
    """Encode like Go's ``encoding/json``: compact, HTML-escaped, integral floats without ``.0``.

    Dict order is kept as given (Go structs have a fixed field order); callers sort maps.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _json_float(value)
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, dict):
        items = (f"{_json_string(str(k))}:{go_json(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _json_string(s: str) -> str:
    out = []
    for ch in s:
        if ch in _JSON_ESCAPES:
            out.append(_JSON_ESCAPES[ch])
        elif ch in _HTML_ESCAPES:
            out.append(_HTML_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _json_float(v: float) -> str:
    if not math.isfinite(v):
        raise ValueError(f"json: unsupported value: {v!r}")
    if v == int(v) and abs(v) < 1e21:
        return str(int(v))
    digits, exp = _shortest_digits(v)
    if abs(v) < 1e-6 or abs(v) >= 1e21:
        return _e_format(v < 0, digits, exp, min_exp_digits=1)
    return format(decimal.Decimal(repr(v)), "f")


def _shortest_digits(v: float) -> tuple[str, int]:
    """Shortest round-trip digits of ``v`` and its decimal exponent (d.ddd × 10^exp)."""
    _sign, digit_tuple, exponent = decimal.Decimal(repr(abs(v))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    exp = len(digit_tuple) + int(exponent) - 1
    return digits, exp


def _e_format(negative: bool, digits: str, exp: int, min_exp_digits: int) -> str:
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    sign = "-" if exp < 0 else "+"
    return ("-" if negative else "") + f"{mantissa}e{sign}{abs(exp):0{min_exp_digits}d}"


def go_value(value: Any, sharp: bool = False) -> str:
    """Format like Go's ``%v`` (or ``%#v`` when ``sharp``) for JSON-decoded values."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _g_format(float(value))
    if isinstance(value, str):
        return go_quote(value) if sharp else value
    if value is None:
        return "<nil>"
    if isinstance(value, list):
        inner = (go_value(v, sharp) for v in value)
        return (
            ("[]interface {}{" + ", ".join(inner) + "}") if sharp else "[" + " ".join(inner) + "]"
        )
    return str(value)


def _g_format(v: float) -> str:
    """Go ``%g`` with shortest precision: exponent form below 1e-4 or from 1e6 up."""
    if v == 0:
        return "0"
    digits, exp = _shortest_digits(v)
    if exp < -4 or exp >= 6:
        return _e_format(v < 0, digits, exp, min_exp_digits=2)
    return ("-" if v < 0 else "") + format(decimal.Decimal(repr(abs(v))).normalize(), "f")


def go_quote(s: str) -> str:
    """Quote like Go's ``strconv.Quote``."""
    out = []
    for ch in s:
        if ch in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[ch])
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _offset_text(gmtoff: int) -> str:
    if gmtoff == 0:
        return "Z"
    sign = "-" if gmtoff < 0 else "+"
    hours, minutes = divmod(abs(gmtoff) // 60, 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def go_time(ns: int, local: bool = True) -> str:
    """RFC 3339 with nanoseconds as Go's ``time.Time`` JSON encoding writes it."""
    secs, frac = divmod(ns, 1_000_000_000)
    tm = time.localtime(secs) if local else time.gmtime(secs)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", tm)
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + _offset_text(tm.tm_gmtoff if local else 0)


def slog_time(ns: int) -> str:
    """The ``time=`` value of Go's slog text handler: milliseconds, local zone."""
    secs, frac = divmod(ns, 1_000_000_000)
    tm = time.localtime(secs)
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", tm)
        + f".{frac // 1_000_000:03d}"
        + _offset_text(tm.tm_gmtoff)
    )


def go_duration(ns: int) -> str:
    """Format like Go's ``time.Duration.String`` (``2.09ms``, ``5m0s``, ``1h0m0s``)."""
    if ns == 0:
        return "0s"
    sign, u = ("-" if ns < 0 else ""), abs(ns)
    if u < 1_000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{_fraction(u, 1_000)}µs"
    if u < 1_000_000_000:
        return f"{sign}{_fraction(u, 1_000_000)}ms"
    hours, rest = divmod(u, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    text = _fraction(rest, 1_000_000_000) + "s"
    if hours:
        text = f"{hours}h{minutes}m{text}"
    elif minutes:
        text = f"{minutes}m{text}"
    return sign + text


def _fraction(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    width = len(str(unit)) - 1
    tail = f"{frac:0{width}d}".rstrip("0")
    return f"{whole}.{tail}" if tail else str(whole)


_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"(\d*\.?\d*)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> int:
    """Parse a Go duration string (``10m``, ``1h30m``, ``-1s``, ``0``) into nanoseconds.

    Raises ValueError with Go's message (``time: invalid duration "x"``).
    """
    body = text.lstrip("+-")
    negative = text.startswith("-")
    if body == "0":
        return 0
    pos, total = 0, 0.0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if not match or match.group(1) in ("", "."):
            if re.fullmatch(r"[\d.]+", body[pos:]):
                raise ValueError(f"time: missing unit in duration {go_quote(text)}")
            raise ValueError(f"time: invalid duration {go_quote(text)}")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not body:
        raise ValueError(f"time: invalid duration {go_quote(text)}")
    return -int(total) if negative else int(total)


def errno_text(exc: OSError) -> str:
    """Go's lowercase text for an errno (``permission denied``, ``address already in use``)."""
    if exc.errno is None:
        return str(exc)
    text = os.strerror(exc.errno)
    return text[:1].lower() + text[1:]
