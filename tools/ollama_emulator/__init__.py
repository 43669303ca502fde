"""A stand-in for ``ollama serve`` on machines without ollama (stdlib only).

Run it as ``tools/ollama-emulator serve``; it behaves like the real server where a
supervisor or client can tell: ``OLLAMA_HOST`` forms (``unix://…`` and bare paths silently
bind 127.0.0.1:11434), ``OLLAMA_MODELS``, ``HOME`` rules and the key pair, startup output on
stderr in slog format, the single ``Error: listen tcp …`` line on a failed bind, the Host
and CORS checks, the endpoints with Ollama's status codes, NDJSON streams and error texts,
the on-disk store with real sha256 digests, and one runner child per loaded model. The
authority it follows is ``reference/ollama-server-facts.md`` of the project.

Deterministic replies
    ``/api/generate`` and ``/api/chat`` answer with one line (wrapped here)::

        emulator model=<name:tag> system=<JSON string> params=<JSON object> images=<n>
        prompt=<JSON string>

    ``params`` is the model's parameters merged with the request ``options`` (request wins),
    compact JSON with sorted keys. ``system`` is the request's system prompt (generate's
    ``system`` or chat's last ``system`` message) else the model's SYSTEM. ``images`` counts
    the images of the request (all chat messages). ``prompt`` is the generate prompt or the
    last chat message. With ``format`` set the reply is ``{"emulator": "<line>"}``. Streams
    send the line in word chunks, then a ``done`` object with metrics. ``/api/embed`` returns
    unit vectors derived from sha256 of model name and text (``<arch>.embedding_length`` of
    the GGUF, else 16 dimensions).

Fault knobs (environment; seconds count from process start)
    ``JANUS_EMU_STARTUP_DELAY_S``   discovery delay before HTTP is answered (default 0.05);
                                    the socket is bound before it, so connects succeed early
    ``JANUS_EMU_CRASH_AFTER_S``     exit at once after S seconds, no cleanup (runners linger)
    ``JANUS_EMU_CRASH_CODE``        exit status for the crash (default 1)
    ``JANUS_EMU_WEDGE_AFTER_S``     after S seconds answer only ``GET``/``HEAD /``; every
                                    other request hangs until shutdown
    ``JANUS_EMU_HANG_AFTER_S``      after S seconds every request hangs, ``/`` included
    ``JANUS_EMU_IGNORE_SIGTERM=1``  ignore SIGTERM (SIGINT still stops it)
    ``JANUS_EMU_EXIT_FAST=1``       exit 0 at once on SIGTERM/SIGINT, leaving runners alive
    ``JANUS_EMU_FAIL_CREATE=GLOB``  fail ``/api/create`` of names matching the glob after the
                                    layer lines: an ``{"error"}`` line under 200 when streaming,
                                    500 with ``stream: false``; no manifest is written
    ``JANUS_EMU_RUNNERS_AT_START=N`` start N runners (``janus-emu-runner-K:latest`` in
                                    ``/api/ps``) right after "Listening on"
    ``JANUS_EMU_RUNNER_IGNORE_SIGTERM=1`` runners ignore SIGTERM (``#K,#L``: only the
                                    runners started K-th and L-th, from 0)
    ``JANUS_EMU_RUNNER_SETSID=1``   runners call setsid() (leave the server's group/session;
                                    ``#K,#L`` as above)
    ``JANUS_EMU_RUNNER_LOCK=PATH``  each runner holds a shared flock on PATH for its life,
                                    standing in for GPU memory; it is free when LOCK_EX works
    ``JANUS_EMU_DUMP=PATH``         at startup write JSON with env, pid, pgid, sid, uid, euid,
                                    gid, egid, groups (``Groups:`` of /proc/self/status),
                                    cwd, umask (octal string) and argv
    ``JANUS_EMU_VERSION=X.Y.Z``     reported version (default 0.12.0); versions from 0.16.2
                                    add the cloud log line and ``/api/status``, from 0.21.0
                                    the startup prune spares files younger than one hour

Known differences: no registry access (pull, push and a missing ``from`` base always fail
as offline), no safetensors import, templates are not parsed, OpenAI-compatible ``/v1``
routes are absent, ``parameters`` and modelfile lines are sorted by name (Go map order is
random), one runner per model name (Ollama shares a runner between names of one blob).
"""

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Run the emulator CLI with ``argv`` (``argv[0]`` is the entry script)."""
    from .cli import main as cli_main

    return cli_main(argv)
