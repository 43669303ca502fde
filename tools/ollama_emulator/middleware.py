"""The two global checks every request passes first: CORS, then the Host-header check.

Both answer 403 with an empty body. The Host check (``allowedHostsMiddleware``) runs only
when the server listens on a loopback address.
"""

from __future__ import annotations

import ipaddress
import socket

from .envconfig import split_host_port

ALLOW_HEADERS = (
    "Authorization,Content-Type,User-Agent,Accept,X-Requested-With,OpenAI-Beta,"
    "x-stainless-arch,x-stainless-async,x-stainless-custom-poll-interval,"
    "x-stainless-helper-method,x-stainless-lang,x-stainless-os,"
    "x-stainless-package-version,x-stainless-poll-helper,x-stainless-retry-count,"
    "x-stainless-runtime,x-stainless-runtime-version,x-stainless-timeout"
)
ALLOW_METHODS = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
_ORIGIN_SCHEMES = (
    "http://",
    "https://",
    "chrome-extension://",
    "safari-extension://",
    "moz-extension://",
    "ms-browser-extension://",
)
_PRIVATE = [
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
]


def origin_config_error(origins: list[str]) -> str | None:
    """The gin-contrib/cors panic text for a bad ``OLLAMA_ORIGINS`` entry, or None."""
    for origin in origins:
        if origin == "*":
            continue
        if origin.count("*") > 1:
            return "only one * is allowed"
        if "*" not in origin and not origin.lower().startswith(_ORIGIN_SCHEMES):
            return "bad origin: origins must contain '*' or include " + ",".join(_ORIGIN_SCHEMES)
    return None


def origin_allowed(origin: str, host: str, origins: list[str]) -> bool:
    """True when ``origin`` is same-origin with ``host`` or matches an allowed pattern."""
    if origin in (f"http://{host}", f"https://{host}") or "*" in origins:
        return True
    if origin == "null":
        return False
    lowered = origin.lower()
    for pattern in (o.lower() for o in origins):
        if "*" in pattern:
            prefix, suffix = pattern.split("*", 1)
            if lowered.startswith(prefix) and lowered.endswith(suffix):
                return True
        elif lowered == pattern:
            return True
    return False


def local_addresses() -> set[str]:
    """IP addresses assigned to this machine's interfaces (from /proc)."""
    found: set[str] = set()
    try:
        with open("/proc/net/fib_trie", encoding="ascii") as fh:
            previous = ""
            for line in fh:
                if "/32 host LOCAL" in line and previous:
                    found.add(previous)
                parts = line.split()
                previous = parts[-1] if len(parts) == 2 and parts[0] in ("|--", "+--") else ""
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as fh:
            for line in fh:
                raw = line.split()[0]
                found.add(str(ipaddress.ip_address(int(raw, 16))))
    except (OSError, ValueError, IndexError):
        pass
    return found


def _ip_allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, local: set[str]) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_unspecified:
        return True
    if any(ip.version == net.version and ip in net for net in _PRIVATE):
        return True
    return str(ip) in local


def host_allowed(host_header: str, local: set[str]) -> tuple[bool, bool]:
    """Whether a loopback-bound server accepts ``host_header``: (accepted, by name).

    "By name" matters because an accepted-by-name OPTIONS request is answered 204 at once.
    """
    try:
        host, _port = split_host_port(host_header)
    except ValueError:
        host = host_header
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and _ip_allowed(ip, local):
        return True, False
    lowered = host.lower()
    if lowered in ("", "localhost") or lowered == socket.gethostname().lower():
        return True, True
    return lowered.endswith((".localhost", ".local", ".internal")), True
