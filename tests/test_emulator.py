"""Tests of ``tools/ollama-emulator``: the stand-in for ``ollama serve``.

Pure functions are tested in-process; everything else runs the emulator as a real child on
an ephemeral loopback port and checks what a supervisor or client can observe.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from tests import emulator_fixtures as fx
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    import emulator_fixtures as fx  # type: ignore[no-redef]

sys.path.insert(0, str(fx.REPO / "tools"))

from ollama_emulator.envconfig import parse_host
from ollama_emulator.gguf_reader import read_gguf
from ollama_emulator.gofmt import go_duration, go_json, go_value
from ollama_emulator.keys import ed25519_public_key
from ollama_emulator.model import parameters_text
from ollama_emulator.names import parse_name

REPLY = re.compile(
    r"^emulator model=(\S+) system=(\".*?\") params=(\{.*\}) images=(\d+) prompt=(\".*\")$"
)


def parse_reply(text: str) -> dict[str, object]:
    """Split the emulator's deterministic reply line into its decoded fields."""
    match = REPLY.match(text)
    assert match, f"not an emulator reply: {text!r}"
    model, system, params, images, prompt = match.groups()
    return {
        "model": model,
        "system": json.loads(system),
        "params": json.loads(params),
        "images": int(images),
        "prompt": json.loads(prompt),
    }


def first_group(pattern: str, text: str) -> str:
    """Group 1 of the first match of ``pattern`` in ``text`` (fails the test if none)."""
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not found in {text!r}"
    return match.group(1)


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[fx.EmulatorProcess]:
    """A fresh emulator with an empty store."""
    process = fx.start_emulator(tmp_path)
    yield process
    process.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fx.EmulatorProcess]:
    """One emulator for read-mostly tests, with ``janus-base`` and ``variant`` created."""
    process = fx.start_emulator(tmp_path_factory.mktemp("shared"))
    process.create_demo_base("janus-base")
    resp = process.post(
        "/api/create",
        {
            "model": "variant",
            "from": "janus-base",
            "system": "You are terse.",
            "parameters": {"num_ctx": 8192, "temperature": 0.2, "stop": ["<|eot|>", "User:"]},
        },
    )
    assert resp.status == 200
    yield process
    process.close()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A temp dir other users can traverse (for tests that drop to ``nobody`` as root)."""
    path = Path(tempfile.mkdtemp(prefix="janus-emu-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_once(
    env: dict[str, str], args: tuple[str, ...] = ("serve",), timeout: float = 15, **popen: object
) -> subprocess.CompletedProcess[str]:
    """Run the emulator to completion (for startup failures)."""
    popen.setdefault("umask", 0o022)
    result: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
        [str(fx.EMULATOR), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
        check=False,
        **popen,
    )
    return result


def raw_request(port: int, head: str, timeout: float = 5.0) -> bytes:
    """Send a hand-written request (for Host header edge cases) and return the response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        chunks: list[bytes] = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


# -- pure functions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "127.0.0.1:11434"),
        ("0.0.0.0", "0.0.0.0:11434"),
        (":11434", ":11434"),
        (":0", ":0"),
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("localhost", "localhost:11434"),
        ("[::1]", "[::1]:11434"),
        ("::1", "[::1]:11434"),
        ("http://127.0.0.1", "127.0.0.1:80"),
        ("https://example.com", "example.com:443"),
        ("tcp://127.0.0.1:9999", "127.0.0.1:9999"),
        ("unix:///tmp/ollama.sock", "127.0.0.1:11434"),
        ("/tmp/ollama.sock", "127.0.0.1:11434"),
        ("unix:/tmp/x.sock", "unix:11434"),
        (" '127.0.0.1:5000' ", "127.0.0.1:5000"),
    ],
)
def test_ollama_host_forms_parse_like_envconfig(value: str, expected: str) -> None:
    assert parse_host(value).hostport() == expected


def test_bad_port_falls_back_to_the_scheme_default() -> None:
    setting = parse_host("http://127.0.0.1:http")

    assert (setting.hostport(), setting.bad_port) == ("127.0.0.1:80", "http")


@pytest.mark.parametrize(
    ("text", "shortest", "valid"),
    [
        ("llama3", "llama3:latest", True),
        ("User/M:7b", "User/M:7b", True),
        ("host.tld/ns/m", "host.tld/ns/m:latest", True),
        ("a/b/c/d", "", False),
        ("bad name", "", False),
        ("", "", False),
    ],
)
def test_model_names_are_normalised(text: str, shortest: str, valid: bool) -> None:
    name = parse_name(text)

    assert name.is_valid() is valid
    if valid:
        assert name.display_shortest() == shortest


def test_go_formatting_matches_go() -> None:
    assert [go_value(v, sharp=True) for v in (8192, 0.2, 1e6, 'a"b', True)] == [
        "8192",
        "0.2",
        "1e+06",
        '"a\\"b"',
        "true",
    ]
    assert (
        go_json({"s": "<x>&", "f": 3.0, "g": 0.00001})
        == '{"s":"\\u003cx\\u003e\\u0026","f":3,"g":0.00001}'
    )
    assert [go_duration(n) for n in (2_090_000, 300 * 10**9, 18_394)] == [
        "2.09ms",
        "5m0s",
        "18.394µs",
    ]


def test_parameters_block_pads_names_to_30_columns() -> None:
    text = parameters_text({"temperature": 0.2, "stop": ["a", "b"]})

    assert text.splitlines() == [
        f'{"stop":<30} "a"',
        f'{"stop":<30} "b"',
        f"{'temperature':<30} 0.2",
    ]


def test_gguf_reader_reads_the_demo_model() -> None:
    info = read_gguf(str(fx.DEMO_GGUF))

    assert (info.architecture, info.kv["general.name"], info.file_type_name()) == (
        "llama",
        "janus-pro-7b-demo",
        "F16",
    )
    assert info.parameter_count == 8 * 16 + 16


def test_ed25519_public_key_matches_rfc8032_vector() -> None:
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")

    assert ed25519_public_key(seed).hex() == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )


# -- startup, environment, exit codes -------------------------------------------------------


def test_startup_prints_key_pair_then_slog_lines_in_order(emu: fx.EmulatorProcess) -> None:
    key_path = emu.home / ".ollama" / "id_ed25519"
    stdout = emu.stdout.text()
    messages = [
        first_group(r'msg="?([^"]*?)"?(?: \w+=|$)', line)
        for line in emu.stderr.lines
        if line.startswith("time=")
    ]

    assert f"Couldn't find '{key_path}'. Generating new private key." in stdout
    assert "Your new public key is: \n\nssh-ed25519 " in stdout
    assert messages[:6] == [
        "server config",
        "total blobs: 0",
        "total unused blobs removed: 0",
        f"Listening on {emu.address} (version 0.12.0)",
        "discovering available GPUs...",
        "inference compute",
    ]
    assert re.match(r"time=\S+ level=INFO source=\S+\.go:\d+ msg=", emu.stderr.lines[0])


def test_key_pair_files_and_modes(emu: fx.EmulatorProcess) -> None:
    ollama_dir = emu.home / ".ollama"
    public = (ollama_dir / "id_ed25519.pub").read_text()

    assert stat.S_IMODE(ollama_dir.stat().st_mode) == 0o755
    assert stat.S_IMODE((ollama_dir / "id_ed25519").stat().st_mode) == 0o600
    assert stat.S_IMODE((ollama_dir / "id_ed25519.pub").stat().st_mode) == 0o644
    assert public in emu.stdout.text()
    if shutil.which("ssh-keygen"):
        derived = subprocess.run(
            ["ssh-keygen", "-y", "-f", str(ollama_dir / "id_ed25519")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert derived.split()[:2] == public.split()[:2]


def test_existing_key_is_kept_and_not_announced(tmp_path: Path) -> None:
    first = fx.start_emulator(tmp_path)
    first.close()
    key = (tmp_path / "home/.ollama/id_ed25519").read_bytes()

    second = fx.start_emulator(tmp_path)
    second.close()

    assert (tmp_path / "home/.ollama/id_ed25519").read_bytes() == key
    assert "Couldn't find" not in second.stdout.text()


def test_failed_bind_is_one_stderr_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = fx.base_env(tmp_path, tmp_path / "models", host=f"127.0.0.1:{port}")

        result = run_once(env)

    assert result.returncode == 1
    assert result.stderr == f"Error: listen tcp 127.0.0.1:{port}: bind: address already in use\n"


def test_http_scheme_means_port_80(tmp_path: Path) -> None:
    env = fx.base_env(tmp_path, tmp_path / "models", host="http://127.0.0.1")
    proc = fx.EmulatorProcess(fx.spawn(env, **fx.unprivileged_kwargs()), tmp_path, tmp_path)
    try:
        match = proc.wait_for(r"Listening on (\S+)|Error: listen tcp (\S+): bind", timeout=10)
    finally:
        proc.close()

    assert (match.group(1) or match.group(2)) == "127.0.0.1:80"


@pytest.mark.parametrize(
    "value", ["unix:///tmp/janus-emu-test.sock", "/tmp/janus-emu-test.sock", "127.0.0.1:notaport"]
)
def test_unusable_host_values_silently_bind_tcp_11434(tmp_path: Path, value: str) -> None:
    if not fx.port_is_free(11434):
        pytest.skip("127.0.0.1:11434 is in use on this machine")
    emu = fx.start_emulator(tmp_path, OLLAMA_HOST=value)
    emu.close()

    assert emu.address == "127.0.0.1:11434"
    assert not Path("/tmp/janus-emu-test.sock").exists()
    assert ("invalid port, using default" in emu.stderr.text()) is value.endswith("notaport")


def test_wildcard_port_zero_listens_on_all_interfaces(tmp_path: Path) -> None:
    emu = fx.start_emulator(tmp_path, OLLAMA_HOST=":0")
    emu.close()

    assert re.fullmatch(r"(\[::\]|0\.0\.0\.0):\d+", emu.address)
    assert emu.port != 0


def test_unset_home_without_models_panics_with_exit_2(tmp_path: Path) -> None:
    result = run_once(fx.base_env(None, None))

    assert result.returncode == 2
    assert result.stderr.startswith("panic: $HOME is not defined\n\ngoroutine 1 [running]:")


def test_unset_home_with_models_fails_with_exit_1(tmp_path: Path) -> None:
    result = run_once(fx.base_env(None, tmp_path / "models"))

    assert (result.returncode, result.stderr) == (1, "Error: $HOME is not defined\n")


def test_unwritable_home_fails_to_create_the_key(open_dir: Path) -> None:
    home = open_dir / "readonly-home"
    home.mkdir(mode=0o555)
    home.chmod(0o555)

    result = run_once(fx.base_env(home, open_dir / "models"), **fx.unprivileged_kwargs())

    assert result.returncode == 1
    assert (
        result.stdout == f"Couldn't find '{home}/.ollama/id_ed25519'. Generating new private key.\n"
    )
    assert result.stderr == (
        f"Error: could not create directory mkdir {home}/.ollama: permission denied\n"
    )


def test_uncreatable_models_dir_names_the_path(open_dir: Path) -> None:
    home, locked = open_dir / "home", open_dir / "locked"
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    locked.mkdir(mode=0o555)
    locked.chmod(0o555)

    result = run_once(fx.base_env(home, locked / "models"), **fx.unprivileged_kwargs())

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"Error: mkdir {locked}/models: permission denied: ensure path elements are traversable"
    )


def test_bad_ollama_origins_entry_panics_with_exit_2(tmp_path: Path) -> None:
    result = run_once(fx.base_env(tmp_path, tmp_path / "models", OLLAMA_ORIGINS="foo.com"))

    assert result.returncode == 2
    assert "\npanic: bad origin: origins must contain '*' or include http://" in result.stderr


def test_cli_version_and_usage_errors(tmp_path: Path) -> None:
    env = fx.base_env(tmp_path, None, host="127.0.0.1:1", JANUS_EMU_VERSION="0.9.9")

    version = run_once(env, ("--version",))
    unknown = run_once(env, ("frobnicate",))

    assert version.returncode == 0
    assert version.stdout.splitlines()[-1] == "Warning: client version is 0.9.9"
    assert (unknown.returncode, unknown.stderr) == (
        1,
        'Error: unknown command "frobnicate" for "ollama"\n',
    )


def test_sigterm_exits_0_and_kills_the_runners(emu: fx.EmulatorProcess) -> None:
    emu.create_demo_base("m")
    assert emu.post("/api/generate", {"model": "m"}).json()["done_reason"] == "load"
    runners = emu.runner_pids()

    emu.signal(signal.SIGTERM)

    assert emu.wait_exit() == 0
    assert len(runners) == 1 and not fx.process_alive(runners[0])


def test_second_sigterm_is_ignored_while_stopping(tmp_path: Path) -> None:
    emu = fx.start_emulator(tmp_path)
    try:
        emu.signal(signal.SIGTERM)
        emu.signal(signal.SIGTERM)
        assert emu.wait_exit() == 0
    finally:
        emu.close()


# -- HTTP basics, Host and CORS checks ------------------------------------------------------


def test_root_version_and_gin_bodies(shared: fx.EmulatorProcess) -> None:
    root = shared.request("GET", "/")
    head = shared.request("HEAD", "/")
    missing = shared.request("GET", "/api/nope")
    wrong = shared.request("PUT", "/api/tags")
    empty = shared.post("/api/show", b"")

    assert (root.status, root.body, root.headers["content-type"]) == (
        200,
        b"Ollama is running",
        "text/plain; charset=utf-8",
    )
    assert (head.status, head.body, head.headers["content-length"]) == (200, b"", "17")
    assert shared.request("GET", "/api/version").json() == {"version": "0.12.0"}
    assert (missing.status, missing.body) == (404, b"404 page not found")
    assert (wrong.status, wrong.body) == (405, b"405 method not allowed")
    assert (empty.status, empty.json()) == (400, {"error": "missing request body"})
    shared.wait_for(
        r'\[GIN\] \S+ - \S+ \| 404 \| +\S+ \| +127\.0\.0\.1 \| GET +"/api/nope"', stream="stdout"
    )


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("localhost", 200),
        ("LOCALHOST:1", 200),
        ("127.0.0.2", 200),
        ("[::1]:11434", 200),
        ("10.0.0.1", 200),
        ("foo.localhost", 200),
        ("box.local:11434", 200),
        ("host.docker.internal", 200),
        ("8.8.8.8:11434", 403),
        ("ollama:11434", 403),
        ("example.com", 403),
        ("localhost.localdomain", 403),
        ("%2Ftmp%2Follama.sock", 403),
    ],
)
def test_host_header_check_on_loopback(shared: fx.EmulatorProcess, host: str, status: int) -> None:
    resp = shared.request("GET", "/api/version", headers={"Host": host})

    assert resp.status == status
    if status == 403:
        assert resp.body == b"" and resp.headers["content-length"] == "0"


def test_request_without_host_header(shared: fx.EmulatorProcess) -> None:
    old = raw_request(shared.port, "GET / HTTP/1.0\r\n\r\n")
    new = raw_request(shared.port, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n")

    assert old.startswith(b"HTTP/1.0 200") and old.endswith(b"Ollama is running")
    assert new.startswith(b"HTTP/1.1 400")


def test_host_check_is_off_when_not_bound_to_loopback(tmp_path: Path) -> None:
    emu = fx.start_emulator(tmp_path, OLLAMA_HOST="0.0.0.0:0")
    try:
        assert emu.request("GET", "/", headers={"Host": "evil.example"}).status == 200
    finally:
        emu.close()


def test_cors_origin_check(shared: fx.EmulatorProcess) -> None:
    foreign = shared.request("GET", "/api/tags", headers={"Origin": "http://evil.example"})
    local = shared.request("GET", "/api/tags", headers={"Origin": "http://localhost:3000"})
    preflight = shared.request(
        "OPTIONS",
        "/api/chat",
        headers={"Origin": "app://desk", "Access-Control-Request-Method": "POST"},
    )

    assert (foreign.status, foreign.body) == (403, b"")
    assert (local.status, local.headers["access-control-allow-origin"]) == (
        200,
        "http://localhost:3000",
    )
    assert preflight.status == 204 and "POST" in preflight.headers["access-control-allow-methods"]


def test_keep_alive_connection_serves_several_requests(shared: fx.EmulatorProcess) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", shared.port, timeout=5)
    try:
        statuses = []
        for _ in range(3):
            conn.request("GET", "/api/tags")
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
    finally:
        conn.close()

    assert statuses == [200, 200, 200]


# -- store, blobs, create -------------------------------------------------------------------


def test_store_layout_uses_real_digests(shared: fx.EmulatorProcess) -> None:
    manifest_path = shared.models / "manifests/registry.ollama.ai/library/variant/latest"
    raw = manifest_path.read_bytes()
    manifest = json.loads(raw)
    tags = {m["name"]: m for m in shared.request("GET", "/api/tags").json()["models"]}

    for layer in manifest["layers"] + [manifest["config"]]:
        blob = shared.models / "blobs" / layer["digest"].replace(":", "-")
        assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == layer["digest"]
        assert blob.stat().st_size == layer["size"]
        assert stat.S_IMODE(blob.stat().st_mode) == 0o644
    assert raw.endswith(b"}\n") and manifest["schemaVersion"] == 2
    assert [layer["mediaType"].rsplit(".", 1)[1] for layer in manifest["layers"]] == [
        "model",
        "system",
        "params",
    ]
    assert tags["variant:latest"]["digest"] == hashlib.sha256(raw).hexdigest()
    assert (
        tags["variant:latest"]["size"]
        == sum(layer["size"] for layer in manifest["layers"]) + manifest["config"]["size"]
    )
    assert stat.S_IMODE(manifest_path.parent.stat().st_mode) == 0o755


def test_config_blob_describes_the_gguf(shared: fx.EmulatorProcess) -> None:
    manifest = json.loads(
        (shared.models / "manifests/registry.ollama.ai/library/janus-base/latest").read_text()
    )
    config = json.loads(
        (shared.models / "blobs" / manifest["config"]["digest"].replace(":", "-")).read_text()
    )

    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert {
        k: config[k]
        for k in (
            "model_format",
            "model_family",
            "model_families",
            "file_type",
            "architecture",
            "os",
        )
    } == {
        "model_format": "gguf",
        "model_family": "llama",
        "model_families": ["llama"],
        "file_type": "F16",
        "architecture": "amd64",
        "os": "linux",
    }


def test_create_progress_lines_in_order(emu: fx.EmulatorProcess) -> None:
    files_lines = emu.create_demo_base("base")
    from_lines = emu.post("/api/create", {"model": "v", "from": "base", "system": "S"}).lines()
    again = emu.post("/api/create", {"model": "v2", "from": "base", "system": "S", "stream": False})

    assert [line["status"].split(" sha256:")[0] for line in files_lines] == [
        "parsing GGUF",
        "using existing layer",
        "writing manifest",
        "success",
    ]
    assert [line["status"].split(" sha256:")[0] for line in from_lines] == [
        "using existing layer",
        "creating new layer",
        "writing manifest",
        "success",
    ]
    assert (again.status, again.json()) == (200, {"status": "success"})


def test_create_rejects_the_legacy_modelfile_field(emu: fx.EmulatorProcess) -> None:
    resp = emu.post("/api/create", {"model": "x", "modelfile": "FROM llama3"})

    assert (resp.status, resp.json()) == (400, {"error": "neither 'from' or 'files' was specified"})


def test_create_from_missing_base_tries_to_pull(emu: fx.EmulatorProcess) -> None:
    streamed = emu.post("/api/create", {"model": "x", "from": "llama3.2"})
    plain = emu.post("/api/create", {"model": "x", "from": "llama3.2", "stream": False})

    assert streamed.status == 200
    assert streamed.lines()[0] == {"status": "pulling manifest"}
    assert streamed.lines()[1]["error"].startswith(
        'pull model manifest: Get "https://registry.ollama.ai/v2/library/llama3.2/manifests/latest"'
    )
    assert streamed.lines()[1]["error"].endswith(
        "dial tcp: lookup registry.ollama.ai: no such host"
    )
    assert plain.status == 500 and "pull model manifest" in plain.json()["error"]


def test_create_validates_files_and_names(emu: fx.EmulatorProcess) -> None:
    digest = emu.upload_blob(fx.DEMO_GGUF)

    absolute = emu.post("/api/create", {"model": "x", "files": {"/etc/x.gguf": digest}})
    empty = emu.post("/api/create", {"model": "x", "files": {"a.gguf": ""}})
    bad_name = emu.post("/api/create", {"model": "bad name!", "files": {"a.gguf": digest}})

    assert (absolute.status, absolute.json()) == (400, {"error": "file path must be relative"})
    assert (empty.status, empty.json()) == (400, {"error": "invalid digest format"})
    assert (bad_name.status, bad_name.json()) == (400, {"error": "invalid model name"})


def test_create_rejects_a_file_that_is_not_gguf(emu: fx.EmulatorProcess, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model at all")
    digest = emu.upload_blob(junk)

    named_gguf = emu.post(
        "/api/create", {"model": "x", "files": {"m.gguf": digest}, "stream": False}
    )
    streamed = emu.post("/api/create", {"model": "x", "files": {"m.gguf": digest}})
    unnamed = emu.post("/api/create", {"model": "x", "files": {"m.bin": digest}})

    assert (named_gguf.status, named_gguf.json()) == (
        400,
        {"error": "supplied file was not in GGUF format"},
    )
    assert streamed.lines() == [
        {"status": "parsing GGUF"},
        {"error": "supplied file was not in GGUF format"},
    ]
    assert (unnamed.status, unnamed.json()) == (400, {"error": "unknown type"})


def test_blob_endpoints_status_codes(emu: fx.EmulatorProcess) -> None:
    data = b"hello blob"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    wrong = "sha256:" + "0" * 64

    assert emu.request("HEAD", f"/api/blobs/{digest}").status == 404
    assert emu.post(f"/api/blobs/{digest}", data).status == 201
    assert emu.post(f"/api/blobs/{digest}", data).status == 200
    assert emu.request("HEAD", f"/api/blobs/{digest}").status == 200
    other = hashlib.sha256(b"other bytes").hexdigest()
    mismatch = emu.post(f"/api/blobs/{wrong}", b"other bytes")
    assert (mismatch.status, mismatch.json()["error"]) == (
        400,
        f'digest mismatch, expected "{wrong}", got "sha256:{other}"',
    )
    assert (emu.models / "blobs" / f"sha256-{other}").exists()
    invalid = emu.post("/api/blobs/sha256:xyz", data)
    assert (invalid.status, invalid.json()) == (400, {"error": "invalid digest format"})


def test_large_upload_is_streamed_to_disk(emu: fx.EmulatorProcess) -> None:
    chunk, count = os.urandom(1 << 20), 128
    hasher = hashlib.sha256()
    for _ in range(count):
        hasher.update(chunk)
    digest = "sha256:" + hasher.hexdigest()

    def peak_rss_kib() -> int:
        status = Path(f"/proc/{emu.pid}/status").read_text()
        return int(first_group(r"VmHWM:\s+(\d+)", status))

    before = peak_rss_kib()
    resp = emu.post(f"/api/blobs/{digest}", (chunk for _ in range(count)), timeout=60)

    assert resp.status == 201
    assert (emu.models / "blobs" / digest.replace(":", "-")).stat().st_size == count << 20
    assert peak_rss_kib() - before < 32 * 1024


def test_copy_and_delete(emu: fx.EmulatorProcess) -> None:
    emu.create_demo_base("base")
    copied = emu.post("/api/copy", {"source": "BASE", "destination": "copy:v1"})
    deleted = emu.request("DELETE", "/api/delete", {"model": "base"})
    names = [m["name"] for m in emu.request("GET", "/api/tags").json()["models"]]
    missing = emu.request("DELETE", "/api/delete", {"model": "base"})
    blob = (
        emu.models / "blobs" / ("sha256-" + hashlib.sha256(fx.DEMO_GGUF.read_bytes()).hexdigest())
    )

    assert (copied.status, copied.body, deleted.status, deleted.body) == (200, b"", 200, b"")
    assert names == ["copy:v1"] and blob.exists()
    assert (missing.status, missing.json()) == (404, {"error": "model 'base' not found"})
    assert emu.request("DELETE", "/api/delete", {"model": "copy:v1"}).status == 200
    assert not blob.exists()


def test_startup_prunes_unused_blobs_unless_noprune(tmp_path: Path) -> None:
    stray = tmp_path / "models" / "blobs" / ("sha256-" + "a" * 64)
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"stray")

    kept = fx.start_emulator(tmp_path, OLLAMA_NOPRUNE="1")
    kept.close()
    pruned = fx.start_emulator(tmp_path)
    pruned.close()

    assert "total blobs" not in kept.stderr.text()
    assert 'msg="total unused blobs removed: 1"' in pruned.stderr.text()
    assert not stray.exists()


def test_pull_always_fails_offline(shared: fx.EmulatorProcess) -> None:
    streamed = shared.post("/api/pull", {"model": "janus-base"})
    invalid = shared.post("/api/pull", {"model": "bad name!"})

    assert streamed.lines()[0] == {"status": "pulling manifest"}
    assert "no such host" in streamed.lines()[1]["error"]
    assert (invalid.status, invalid.json()) == (400, {"error": "invalid model name"})


# -- show, chat, generate, runners -----------------------------------------------------------


def test_show_reports_parent_parameters_and_modelfile(shared: fx.EmulatorProcess) -> None:
    show = shared.post("/api/show", {"model": "Variant"}).json()
    base = shared.post("/api/show", {"model": "janus-base:latest"}).json()
    missing = shared.post("/api/show", {"model": "nope"})

    assert show["details"]["parent_model"] == "janus-base:latest"
    assert base["details"]["parent_model"] == fx.DEMO_GGUF.name
    assert show["parameters"].splitlines() == [
        f"{'num_ctx':<30} 8192",
        f'{"stop":<30} "<|eot|>"',
        f'{"stop":<30} "User:"',
        f"{'temperature':<30} 0.2",
    ]
    assert show["modelfile"].startswith('# Modelfile generated by "ollama show"\n')
    assert "\nSYSTEM You are terse.\n" in show["modelfile"]
    assert show["system"] == "You are terse." and show["template"] == "{{ .Prompt }}"
    assert show["capabilities"] == ["completion"]
    assert show["model_info"]["general.architecture"] == "llama"
    assert (missing.status, missing.json()) == (404, {"error": "model 'nope:latest' not found"})


def test_chat_reply_shows_model_system_params_and_images(shared: fx.EmulatorProcess) -> None:
    image = base64.b64encode(b"\x89PNG fake").decode()
    resp = shared.post(
        "/api/chat",
        {
            "model": "variant",
            "stream": False,
            "options": {"temperature": 0.9, "seed": 7},
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi", "images": [image, image]},
            ],
        },
    )
    reply = parse_reply(resp.json()["message"]["content"])

    assert resp.status == 200 and resp.json()["done_reason"] == "stop"
    assert reply == {
        "model": "variant:latest",
        "system": "Be brief.",
        "params": {"num_ctx": 8192, "seed": 7, "temperature": 0.9, "stop": ["<|eot|>", "User:"]},
        "images": 2,
        "prompt": "hi",
    }


def test_generate_streams_ndjson_and_uses_the_model_system(shared: fx.EmulatorProcess) -> None:
    resp = shared.post("/api/generate", {"model": "variant", "prompt": "why?"})
    lines = resp.lines()
    reply = parse_reply("".join(line["response"] for line in lines))

    assert resp.headers["content-type"] == "application/x-ndjson"
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert (reply["system"], reply["prompt"]) == ("You are terse.", "why?")


def test_unknown_model_is_404_for_inference(shared: fx.EmulatorProcess) -> None:
    chat = shared.post(
        "/api/chat", {"model": "ghost", "messages": [{"role": "user", "content": "x"}]}
    )
    generate = shared.post("/api/generate", {"model": "ghost", "prompt": "x"})
    no_model = shared.post("/api/chat", {"messages": []})

    assert (chat.status, chat.json()) == (404, {"error": "model 'ghost' not found"})
    assert (generate.status, generate.json()) == (404, {"error": "model 'ghost' not found"})
    assert (no_model.status, no_model.json()) == (400, {"error": "model is required"})


def test_one_runner_per_loaded_model_in_the_server_group(emu: fx.EmulatorProcess) -> None:
    emu.create_demo_base("a")
    emu.post("/api/create", {"model": "b", "from": "a", "system": "B"})

    load = emu.post("/api/generate", {"model": "a"}).json()
    emu.post(
        "/api/chat", {"model": "b", "messages": [{"role": "user", "content": "x"}], "stream": False}
    )
    emu.post("/api/generate", {"model": "a", "prompt": "again", "stream": False})
    runners = emu.runner_pids()
    names = sorted(m["name"] for m in emu.request("GET", "/api/ps").json()["models"])

    assert load["done_reason"] == "load"
    assert names == ["a:latest", "b:latest"] and len(runners) == 2
    assert {os.getpgid(pid) for pid in runners} == {os.getpgid(emu.pid)}
    assert {os.getsid(pid) for pid in runners} == {os.getsid(emu.pid)}
    assert all("runner" in Path(f"/proc/{pid}/cmdline").read_text() for pid in runners)


def test_keep_alive_zero_unloads_the_runner(emu: fx.EmulatorProcess) -> None:
    emu.create_demo_base("a")
    emu.post("/api/generate", {"model": "a"})
    runner = emu.runner_pids()[0]

    unload = emu.post("/api/chat", {"model": "a", "messages": [], "keep_alive": 0}).json()

    assert unload["done_reason"] == "unload" and unload["message"] == {
        "role": "assistant",
        "content": "",
    }
    assert emu.request("GET", "/api/ps").json() == {"models": []}
    assert not fx.process_alive(runner)


def test_keep_alive_expiry_from_the_environment(tmp_path: Path) -> None:
    emu = fx.start_emulator(tmp_path, OLLAMA_KEEP_ALIVE="1s")
    try:
        emu.create_demo_base("a")
        emu.post("/api/generate", {"model": "a", "prompt": "x", "stream": False})
        runner = emu.runner_pids()[0]
        fx.wait_until(lambda: not fx.process_alive(runner), timeout=10, what="runner expiry")
        assert emu.request("GET", "/api/ps").json() == {"models": []}
    finally:
        emu.close()


def test_embed_is_deterministic(shared: fx.EmulatorProcess) -> None:
    first = shared.post("/api/embed", {"model": "variant", "input": ["a", "b"]}).json()
    second = shared.post("/api/embed", {"model": "variant", "input": "a"}).json()

    assert len(first["embeddings"]) == 2 and len(first["embeddings"][0]) == 16
    assert second["embeddings"][0] == first["embeddings"][0]
    assert abs(sum(v * v for v in first["embeddings"][1]) - 1) < 1e-4


def test_official_ollama_client_speaks_to_the_emulator(emu: fx.EmulatorProcess) -> None:
    import ollama

    with ollama.Client(host=f"http://127.0.0.1:{emu.port}") as client:
        digest = client.create_blob(fx.DEMO_GGUF)
        client.create(model="janus-base", files={fx.DEMO_GGUF.name: digest})
        client.create(
            model="janus-terse",
            from_="janus-base",
            system="Answer tersely.",
            parameters={"num_ctx": 4096, "temperature": 0.1},
        )
        listed = sorted(m.model for m in client.list().models)
        shown = client.show("janus-terse")
        answer = client.chat(
            model="janus-terse",
            messages=[
                {"role": "user", "content": "hello", "images": [fx.DEMO_GGUF.read_bytes()[:8]]}
            ],
        )
        with pytest.raises(ollama.ResponseError) as missing:
            client.chat(model="ghost", messages=[{"role": "user", "content": "x"}])

    reply = parse_reply(answer.message.content)
    assert listed == ["janus-base:latest", "janus-terse:latest"]
    assert shown.details.parent_model == "janus-base:latest" and shown.details.family == "llama"
    assert shown.modelinfo["general.architecture"] == "llama"
    assert reply["system"] == "Answer tersely." and reply["images"] == 1
    assert reply["params"] == {"num_ctx": 4096, "temperature": 0.1}
    assert missing.value.status_code == 404


# -- fault knobs ------------------------------------------------------------------------------


def test_knob_startup_delay_connect_early_http_late(tmp_path: Path) -> None:
    emu = fx.start_emulator(tmp_path, ready=False, JANUS_EMU_STARTUP_DELAY_S="1.5")
    try:
        with socket.create_connection(("127.0.0.1", emu.port), timeout=1):
            pass
        with pytest.raises(TimeoutError):
            emu.request("GET", "/", timeout=0.3)
        emu.wait_ready(timeout=10)
        lines = emu.stderr.text()
        assert lines.index("Listening on") < lines.index("inference compute")
    finally:
        emu.close()


def test_knob_crash_after(tmp_path: Path) -> None:
    emu = fx.start_emulator(
        tmp_path, ready=False, JANUS_EMU_CRASH_AFTER_S="1", JANUS_EMU_CRASH_CODE="3"
    )
    try:
        assert emu.wait_exit(timeout=10) == 3
    finally:
        emu.close()


def test_knob_wedge_answers_root_only(tmp_path: Path) -> None:
    emu = fx.start_emulator(tmp_path, JANUS_EMU_WEDGE_AFTER_S="0")
    try:
        assert emu.request("GET", "/", timeout=2).status == 200
        with pytest.raises(TimeoutError):
            emu.request("GET", "/api/tags", timeout=0.5)
        emu.signal(signal.SIGTERM)
        assert emu.wait_exit() == 0
    finally:
        emu.close()


def test_knob_hang_blocks_everything(tmp_path: Path) -> None:
    emu = fx.start_emulator(tmp_path, ready=False, JANUS_EMU_HANG_AFTER_S="0")
    try:
        with pytest.raises(TimeoutError):
            emu.request("GET", "/", timeout=0.5)
    finally:
        emu.close()


def test_knob_ignore_sigterm(tmp_path: Path) -> None:
    emu = fx.start_emulator(tmp_path, JANUS_EMU_IGNORE_SIGTERM="1")
    try:
        emu.signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            emu.wait_exit(timeout=0.5)
        assert emu.request("GET", "/").status == 200
        emu.signal(signal.SIGKILL)
        assert emu.wait_exit() == -signal.SIGKILL
    finally:
        emu.close()


def test_knob_exit_fast_leaves_runners_behind(tmp_path: Path) -> None:
    emu = fx.start_emulator(tmp_path, JANUS_EMU_EXIT_FAST="1", JANUS_EMU_RUNNERS_AT_START="1")
    try:
        runner = emu.runner_pids()[0]
        emu.signal(signal.SIGTERM)
        assert emu.wait_exit() == 0
        assert fx.process_alive(runner)
    finally:
        emu.close()


def test_knob_fail_create(tmp_path: Path) -> None:
    emu = fx.start_emulator(tmp_path, JANUS_EMU_FAIL_CREATE="doomed-*")
    try:
        emu.create_demo_base("fine")
        plain = emu.post("/api/create", {"model": "doomed-1", "from": "fine", "stream": False})
        streamed = emu.post("/api/create", {"model": "Doomed-2", "from": "fine"})

        assert plain.status == 500 and "JANUS_EMU_FAIL_CREATE" in plain.json()["error"]
        assert streamed.status == 200
        assert streamed.lines()[0]["status"].startswith("using existing layer")
        assert "JANUS_EMU_FAIL_CREATE" in streamed.lines()[-1]["error"]
        assert emu.post("/api/show", {"model": "doomed-1"}).status == 404
    finally:
        emu.close()


def test_knob_runners_at_start(tmp_path: Path) -> None:
    emu = fx.start_emulator(tmp_path, JANUS_EMU_RUNNERS_AT_START="2")
    try:
        names = [m["name"] for m in emu.request("GET", "/api/ps").json()["models"]]
        runners = emu.runner_pids()
        assert sorted(names) == ["janus-emu-runner-0:latest", "janus-emu-runner-1:latest"]
        assert len(runners) == 2
        emu.signal(signal.SIGTERM)
        assert emu.wait_exit() == 0
        assert not any(fx.process_alive(pid) for pid in runners)
    finally:
        emu.close()


def test_knob_runner_setsid_and_ignore_sigterm(tmp_path: Path) -> None:
    emu = fx.start_emulator(
        tmp_path,
        JANUS_EMU_RUNNERS_AT_START="1",
        JANUS_EMU_RUNNER_SETSID="1",
        JANUS_EMU_RUNNER_IGNORE_SIGTERM="1",
    )
    try:
        runner = emu.runner_pids()[0]
        fx.wait_until(lambda: os.getsid(runner) == runner, what="runner setsid")
        os.kill(runner, signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            emu.wait_exit(timeout=0.3)
        assert fx.process_alive(runner)
        assert os.getpgid(runner) != os.getpgid(emu.pid)
        emu.signal(signal.SIGTERM)
        assert emu.wait_exit() == 0
        assert not fx.process_alive(runner)
    finally:
        emu.close()


def test_knob_runner_lock_stands_in_for_gpu_memory(tmp_path: Path) -> None:
    lock = tmp_path / "gpu.lock"
    emu = fx.start_emulator(
        tmp_path, JANUS_EMU_RUNNER_LOCK=str(lock), JANUS_EMU_RUNNERS_AT_START="1"
    )

    def gpu_free() -> bool:
        with open(lock, "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

    try:
        assert not gpu_free()
        emu.signal(signal.SIGTERM)
        assert emu.wait_exit() == 0
        assert gpu_free()
    finally:
        emu.close()


def test_knob_dump_records_environment_ids_and_umask(tmp_path: Path) -> None:
    dump = tmp_path / "dump.json"
    emu = fx.start_emulator(tmp_path, JANUS_EMU_DUMP=str(dump))
    emu.close()
    data = json.loads(dump.read_text())

    assert data["env"]["HOME"] == str(emu.home) and data["env"]["JANUS_EMU_DUMP"] == str(dump)
    assert (data["uid"], data["gid"], data["umask"]) == (os.getuid(), os.getgid(), "0022")
    assert data["groups"] == [
        int(g) for g in first_group(r"Groups:(.*)", Path("/proc/self/status").read_text()).split()
    ]
    assert data["cwd"] == os.getcwd() and data["pid"] == emu.pid


def test_knob_version(tmp_path: Path) -> None:
    emu = fx.start_emulator(tmp_path, JANUS_EMU_VERSION="0.21.3")
    try:
        assert emu.request("GET", "/api/version").json() == {"version": "0.21.3"}
        assert "(version 0.21.3)" in emu.stderr.text()
        assert "Ollama cloud disabled: false" in emu.stderr.text()
        assert emu.request("GET", "/api/status").status == 200
    finally:
        emu.close()


def test_umask_077_keeps_blobs_world_readable(tmp_path: Path) -> None:
    home, models = tmp_path / "home", tmp_path / "models"
    home.mkdir()
    proc = fx.EmulatorProcess(fx.spawn(fx.base_env(home, models), umask=0o077), home, models)
    try:
        proc.wait_listening()
        proc.wait_ready()
        proc.create_demo_base("m")
        blob = next((models / "blobs").iterdir())
        manifest = models / "manifests/registry.ollama.ai/library/m/latest"
        assert stat.S_IMODE(blob.stat().st_mode) == 0o644
        assert stat.S_IMODE(manifest.stat().st_mode) == 0o600
        assert stat.S_IMODE((models / "blobs").stat().st_mode) == 0o700
    finally:
        proc.close()


def test_emulator_runs_under_the_system_python_with_stdlib_only() -> None:
    script = fx.EMULATOR.read_text()
    imports = set()
    for path in (fx.REPO / "tools" / "ollama_emulator").glob("*.py"):
        imports |= set(re.findall(r"^(?:from|import) (\w+)", path.read_text(), re.MULTILINE))

    assert script.startswith("#!/usr/bin/env -S python3 -S -I\n")  # no site, no PYTHON* vars
    assert stat.S_IMODE(fx.EMULATOR.stat().st_mode) == 0o755
    assert imports <= set(sys.stdlib_module_names) | {"__future__"}
