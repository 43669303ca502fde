"""Command line: ``serve``, ``runner`` (internal), ``-v/--version``, help and usage errors."""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys

from .envconfig import env_var, parse_host
from .faults import DEFAULT_VERSION
from .runner import run_runner
from .server import run_server
from .slogtext import default_log, go_panic, write_line

USAGE = """Large language model runner

Usage:
  ollama [flags]
  ollama [command]

Available Commands:
  serve       Start ollama
  create      Create a model from a Modelfile
  show        Show information for a model
  run         Run a model
  stop        Stop a running model
  pull        Pull a model from a registry
  push        Push a model to a registry
  list        List models
  ps          List running models
  cp          Copy a model
  rm          Remove a model
  help        Help about any command

Flags:
  -h, --help      help for ollama
  -v, --version   Show version information

Use "ollama [command] --help" for more information about a command."""

_CLIENT_COMMANDS = {
    "create",
    "show",
    "run",
    "stop",
    "pull",
    "push",
    "list",
    "ls",
    "ps",
    "cp",
    "rm",
    "signin",
    "signout",
}


def _server_version() -> str | None:
    setting = parse_host(os.environ.get("OLLAMA_HOST", ""))
    host = "127.0.0.1" if setting.host in ("", "0.0.0.0", "::") else setting.host
    try:
        conn = http.client.HTTPConnection(host, int(setting.port), timeout=1.0)
        conn.request("GET", "/api/version")
        body = conn.getresponse().read()
        conn.close()
        return str(json.loads(body)["version"])
    except (OSError, ValueError, KeyError, http.client.HTTPException):
        return None


def print_version() -> int:
    """``ollama -v``: the running server's version, and the client's when they differ."""
    client = env_var("JANUS_EMU_VERSION") or DEFAULT_VERSION
    server = _server_version()
    if server is None:
        print("Warning: could not connect to a running Ollama instance")
        print(f"Warning: client version is {client}")
        return 0
    print(f"ollama version is {server}")
    if server != client:
        print(f"Warning: client version is {client}")
    return 0


def _usage_error(args: list[str]) -> int:
    first = args[0]
    if first.startswith("--"):
        text = f"unknown flag: {first.split('=')[0]}"
    elif first.startswith("-"):
        text = f"unknown shorthand flag: '{first[1:2]}' in {first}"
    elif first in _CLIENT_COMMANDS:
        text = f'the emulator implements only "serve" and "--version", not "{first}"'
    else:
        text = f'unknown command "{first}" for "ollama"'
    write_line(sys.stderr, f"Error: {text}")
    return 1


def main(argv: list[str]) -> int:
    """Dispatch like the ``ollama`` CLI; returns the exit status."""
    # Go programs die of SIGINT unless they handle it; Python would raise KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if not env_var("OLLAMA_MODELS") and not os.environ.get("HOME"):
        # envconfig.Models() panics inside NewCLI, before any command runs.
        return go_panic(
            "$HOME is not defined",
            [
                ("github.com/ollama/ollama/envconfig.Models()", "envconfig/config.go:95"),
                ("github.com/ollama/ollama/envconfig.AsMap()", "envconfig/config.go:252"),
                ("github.com/ollama/ollama/cmd.NewCLI()", "cmd/cmd.go:1469"),
            ],
        )
    setting = parse_host(os.environ.get("OLLAMA_HOST", ""))
    if setting.bad_port is not None:
        default_log(
            "WARN", "invalid port, using default", port=setting.bad_port, default=setting.port
        )
    args = argv[1:]
    if args and args[0] == "runner":
        return run_runner(args[1:])
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if args[0] in ("-v", "--version"):
        return print_version()
    if args[0] == "serve":
        if len(args) > 1 and not args[1].startswith("-"):
            write_line(sys.stderr, f"Error: accepts 0 arg(s), received {len(args) - 1}")
            return 1
        return run_server(os.path.realpath(argv[0]))
    return _usage_error(args)
