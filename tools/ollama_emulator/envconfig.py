"""Environment variables as Ollama's ``envconfig`` reads them.

``OLLAMA_HOST`` follows ``envconfig.Host()``: an unknown scheme is ignored, a path after the
host is dropped by the server, and a value without ``host:port`` (``unix:///x.sock``, a bare
path) silently becomes ``127.0.0.1:11434``.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from .gofmt import go_duration, parse_go_duration

FOREVER_NS = (1 << 63) - 1
DEFAULT_KEEP_ALIVE_NS = 5 * 60 * 1_000_000_000

DEFAULT_ORIGINS = [
    f"{scheme}://{host}{port}"
    for host in ("localhost", "127.0.0.1", "0.0.0.0")
    for scheme in ("http", "https")
    for port in ("", ":*")
] + ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]


def env_var(name: str) -> str:
    """The variable with surrounding whitespace, then surrounding quotes, removed (``Var``)."""
    return os.environ.get(name, "").strip().strip("\"'")


def env_bool(name: str) -> bool:
    """Go ``Bool``: empty is false; a value ``ParseBool`` cannot read counts as true."""
    value = env_var(name)
    return bool(value) and value not in ("0", "f", "F", "false", "FALSE", "False")


@dataclass(frozen=True)
class HostSetting:
    """The parsed ``OLLAMA_HOST``: scheme, host, port and the (ignored) path."""

    scheme: str
    host: str
    port: str
    path: str
    bad_port: str | None = None

    def hostport(self) -> str:
        """``net.JoinHostPort(host, port)``: brackets around IPv6 literals."""
        return join_host_port(self.host, self.port)

    def url(self) -> str:
        """The value as ``url.URL.String()`` shows it in the "server config" line."""
        path = "/" + self.path if self.path else ""
        return f"{self.scheme}://{self.hostport()}{path}"


def join_host_port(host: str, port: str) -> str:
    """Go's ``net.JoinHostPort``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(hostport: str) -> tuple[str, str]:
    """Go's ``net.SplitHostPort``; raises ValueError when there is no port or too many colons."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ValueError("missing ']' in address")
        if end + 1 == len(hostport):
            raise ValueError("missing port in address")
        if hostport[end + 1] != ":":
            raise ValueError("missing port in address")
        host, port = hostport[1:end], hostport[end + 2 :]
        if "[" in host or "]" in port or "[" in port:
            raise ValueError("unexpected '[' in address")
        return host, port
    index = hostport.rfind(":")
    if index < 0:
        raise ValueError("missing port in address")
    host, port = hostport[:index], hostport[index + 1 :]
    if ":" in host:
        raise ValueError("too many colons in address")
    return host, port


def _ip_text(text: str) -> str | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _valid_port(port: str) -> bool:
    body = port[1:] if port[:1] in "+-" else port
    if not body.isdigit() or not body.isascii():
        return False
    return 0 <= int(port) <= 65535


def parse_host(raw: str) -> HostSetting:
    """Parse an ``OLLAMA_HOST`` value exactly as ``envconfig.Host()`` does."""
    text = raw.strip().strip("\"'").strip()
    default_port = "11434"
    if "://" in text:
        scheme, hostport = text.split("://", 1)
        default_port = {"http": "80", "https": "443"}.get(scheme, default_port)
    elif text == "ollama.com":
        scheme, hostport = "https", "ollama.com:443"
    else:
        scheme, hostport = "http", text
    hostport, _, path = hostport.partition("/")
    try:
        host, port = split_host_port(hostport)
    except ValueError:
        host, port = "127.0.0.1", default_port
        ip = _ip_text(hostport.strip("[]"))
        if ip is not None:
            host = ip
        elif hostport:
            host = hostport
    bad_port = None
    if not _valid_port(port):
        bad_port, port = port, default_port
    return HostSetting(scheme, host, port, path, bad_port)


def keep_alive_ns() -> int:
    """``OLLAMA_KEEP_ALIVE`` in ns: duration or seconds, negative forever, bad value 5m."""
    value = env_var("OLLAMA_KEEP_ALIVE")
    result = DEFAULT_KEEP_ALIVE_NS
    if value:
        try:
            result = parse_go_duration(value)
        except ValueError:
            try:
                result = int(value) * 1_000_000_000
            except ValueError:
                pass
    return FOREVER_NS if result < 0 else result


def allowed_origins() -> list[str]:
    """``OLLAMA_ORIGINS`` entries followed by the built-in defaults."""
    extra = [item.strip() for item in env_var("OLLAMA_ORIGINS").split(",") if item.strip()]
    return extra + DEFAULT_ORIGINS


def models_dir(home: str) -> str:
    """``OLLAMA_MODELS`` or ``$HOME/.ollama/models``."""
    return env_var("OLLAMA_MODELS") or os.path.join(home, ".ollama", "models")


def config_map(host: HostSetting, models: str) -> str:
    """The ``env="map[…]"`` value of the "server config" line (Go map syntax, sorted keys)."""
    keep_alive = keep_alive_ns()
    values = {
        "CUDA_VISIBLE_DEVICES": env_var("CUDA_VISIBLE_DEVICES"),
        "GPU_DEVICE_ORDINAL": env_var("GPU_DEVICE_ORDINAL"),
        "HIP_VISIBLE_DEVICES": env_var("HIP_VISIBLE_DEVICES"),
        "HSA_OVERRIDE_GFX_VERSION": env_var("HSA_OVERRIDE_GFX_VERSION"),
        "HTTPS_PROXY": env_var("HTTPS_PROXY"),
        "HTTP_PROXY": env_var("HTTP_PROXY"),
        "NO_PROXY": env_var("NO_PROXY"),
        "OLLAMA_CONTEXT_LENGTH": env_var("OLLAMA_CONTEXT_LENGTH") or "4096",
        "OLLAMA_DEBUG": "DEBUG" if env_bool("OLLAMA_DEBUG") else "INFO",
        "OLLAMA_FLASH_ATTENTION": str(env_bool("OLLAMA_FLASH_ATTENTION")).lower(),
        "OLLAMA_HOST": host.url(),
        "OLLAMA_KEEP_ALIVE": go_duration(keep_alive)
        if keep_alive != FOREVER_NS
        else "2562047h47m16.854775807s",
        "OLLAMA_MAX_LOADED_MODELS": env_var("OLLAMA_MAX_LOADED_MODELS") or "0",
        "OLLAMA_MAX_QUEUE": env_var("OLLAMA_MAX_QUEUE") or "512",
        "OLLAMA_MODELS": models,
        "OLLAMA_NOPRUNE": str(env_bool("OLLAMA_NOPRUNE")).lower(),
        "OLLAMA_NUM_PARALLEL": env_var("OLLAMA_NUM_PARALLEL") or "1",
        "OLLAMA_ORIGINS": "[" + " ".join(allowed_origins()) + "]",
        "ROCR_VISIBLE_DEVICES": env_var("ROCR_VISIBLE_DEVICES"),
    }
    return "map[" + " ".join(f"{key}:{value}" for key, value in sorted(values.items())) + "]"
