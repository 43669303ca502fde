"""Loading and checking the configuration: every validator, located errors, --check."""

from __future__ import annotations

import io
import logging
import os
import re
import textwrap
from pathlib import Path

import pytest

from supervisor.config import Config, SocketConfig, load_config
from supervisor.errors import ConfigError, ConfigProblem
from supervisor.modelfile import variant_request
from supervisor.syscheck import check_system, run_check

CONF = Path(__file__).resolve().parent.parent / "conf"

VALID = """\
control:
  socket: ctl.sock
ollama:
  binary: bin/ollama
state_dir: state
log_dir: log
tenants:
  dev:
    user: janus_test_dev
    create_user: true
    models_dir: models/dev
    socket: dev.sock
    variants:
      - name: dev-variant
        modelfile: dev.Modelfile
  qa:
    user: janus_test_qa
    create_user: true
    models_dir: models/qa
    socket:
      path: qa.sock
      mode: "0600"
    variants:
      - name: qa-variant
        from: base
        system: terse
        parameters: {num_ctx: 2048, temperature: 0.2, stop: ["a", "b"], use_mmap: false}
"""


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    """A directory with an executable stand-in binary and a Modelfile."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "ollama").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "ollama").chmod(0o755)
    (tmp_path / "dev.Modelfile").write_text("FROM base\nSYSTEM describe images\n")
    return tmp_path


def write(directory: Path, text: str, name: str = "janus.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def only_problem(path: Path, match: str) -> ConfigProblem:
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert re.search(match, problems[0].message), problems[0].message
    assert problems[0].file == str(path)
    return problems[0]


def line_of(path: Path, text: str, nth: int = 1) -> int:
    """1-based line of the ``nth`` line of ``path`` that contains ``text``."""
    found = [i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line]
    return found[nth - 1]


# ---- valid configurations -------------------------------------------------------------------


def test_valid_config_resolves_relative_paths_against_its_directory(
    conf_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(conf_dir, VALID)
    monkeypatch.chdir("/")

    config = load_config(path)

    assert config.source == path
    assert config.control.socket == conf_dir / "ctl.sock"
    assert config.ollama.binary == conf_dir / "bin" / "ollama"
    assert config.tenants["dev"].models_dir == conf_dir / "models" / "dev"
    assert config.tenants["dev"].socket == SocketConfig(path=conf_dir / "dev.sock", mode=0o660)
    assert config.tenants["qa"].socket.mode == 0o600
    assert config.tenants["dev"].variants[0].modelfile == conf_dir / "dev.Modelfile"


def test_inline_variant_parameters_are_typed_like_modelfile_ones(conf_dir: Path) -> None:
    config = load_config(write(conf_dir, VALID))
    qa = config.tenants["qa"]

    plan = variant_request(config, "qa", qa.variants[0])

    assert plan.request == {
        "model": "qa-variant",
        "from": "base",
        "system": "terse",
        "parameters": {"num_ctx": 2048, "temperature": 0.2, "stop": ["a", "b"], "use_mmap": False},
    }


def test_modelfile_variant_request(conf_dir: Path) -> None:
    config = load_config(write(conf_dir, VALID))

    plan = variant_request(config, "dev", config.tenants["dev"].variants[0])

    assert plan.request == {"model": "dev-variant", "from": "base", "system": "describe images"}


def test_reload_rereads_an_edited_modelfile(conf_dir: Path) -> None:
    path = write(conf_dir, VALID)
    load_config(path)
    (conf_dir / "dev.Modelfile").write_text("FROM base\nSYSTEM describe images briefly\n")

    config = load_config(path)

    plan = variant_request(config, "dev", config.tenants["dev"].variants[0])
    assert plan.request["system"] == "describe images briefly"


def test_deprecated_inline_parameter_is_dropped_with_a_warning(
    conf_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(conf_dir, VALID.replace("use_mmap: false", "mirostat: 1"))

    with caplog.at_level(logging.WARNING):
        config = load_config(path)

    assert "mirostat" not in config.tenants["qa"].variants[0].parameters
    assert [r.getMessage() for r in caplog.records] == [
        (
            "variant qa-variant: parameter mirostat is deprecated and ignored "
            "(Ollama dropped it in v0.7); remove it"
        )
    ]


@pytest.mark.parametrize(
    ("written", "mode"),
    [('"0660"', 0o660), ('"660"', 0o660), ('"0o640"', 0o640), ("0600", 0o600), ('"0"', 0)],
)
def test_mode_forms_accepted(conf_dir: Path, written: str, mode: int) -> None:
    path = write(conf_dir, VALID.replace('mode: "0600"', f"mode: {written}"))

    assert load_config(path).tenants["qa"].socket.mode == mode


def test_mode_given_from_python_is_an_int() -> None:
    assert SocketConfig(path=Path("/run/x.sock"), mode=0o640).mode == 0o640


def test_example_configs_load() -> None:
    prod = load_config(CONF / "janus-supervisor.yaml")
    demo = load_config(CONF / "demo.yaml")

    assert prod.control.socket == Path("/run/janus-supervisor/control.sock")
    assert prod.ollama.binary == Path("/usr/local/bin/ollama")
    assert prod.base_models["janus-pro-7b"].gguf == Path("/srv/models/janus-pro-7b.gguf")
    assert {
        n: (t.user, t.create_user, t.models_dir, t.socket.path, t.socket.mode)
        for n, t in prod.tenants.items()
    } == {
        role: (
            f"janus_{role}",
            True,
            Path(f"/var/lib/ollama_{role}"),
            Path(f"/run/janus-supervisor/{role}.sock"),
            0o660,
        )
        for role in ("admin", "dev", "qa")
    }
    assert list(demo.tenants) == ["admin", "dev", "qa"]
    assert demo.ollama.binary == CONF.parent / "tools" / "ollama-emulator"
    assert demo.base_models["janus-pro-7b"].gguf == CONF / "demo" / "janus-pro-7b-demo.gguf"
    assert demo.control.socket == CONF.parent / ".demo" / "control.sock"
    assert [t.user for t in demo.tenants.values()] == [
        "janus_demo_admin",
        "janus_demo_dev",
        "janus_demo_qa",
    ]
    assert all(t.socket.path.parent == CONF.parent / ".demo" for t in demo.tenants.values())
    assert all(t.start_timeout_s <= 30 for t in demo.tenants.values())


@pytest.mark.parametrize("name", ["janus-supervisor.yaml", "demo.yaml"])
def test_example_variants_match_the_tutorial(name: str) -> None:
    config = load_config(CONF / name)

    plans = {
        t: variant_request(config, t, c.variants[0]).request for t, c in config.tenants.items()
    }

    assert plans["admin"] == {"model": "janus-pro-7b-admin", "from": "janus-pro-7b"}
    assert plans["dev"]["model"] == "janus-pro-7b-dev"
    assert "<image>" in plans["dev"]["system"] and "base64" in plans["dev"]["system"]
    assert set(plans["dev"]) == {"model", "from", "system"}
    assert plans["qa"]["parameters"] == {"num_ctx": 2048}
    assert "Chinese" in plans["qa"]["system"]


# ---- one validator at a time --------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "match"),
    [
        (
            "660",
            (
                r"^660 is read as a decimal number, not octal; write the mode as a quoted octal "
                r'string such as "0660"$'
            ),
        ),
        ('"0690"', r"'0690' is not an octal file mode; write the mode as a quoted octal string"),
        ('"01777"', r"'01777' \(0o1777\) has bits outside 0o777; write the mode"),
        ("01777", r"1023 \(0o1777\) has bits outside 0o777"),
        ("true", r"True is not an octal file mode"),
        ('"rw-rw----"', r"'rw-rw----' is not an octal file mode"),
    ],
)
def test_bad_modes_are_refused(conf_dir: Path, written: str, match: str) -> None:
    path = write(conf_dir, VALID.replace('mode: "0600"', f"mode: {written}"))

    problem = only_problem(path, match)

    assert problem.location == "tenants.qa.socket.mode"
    assert problem.line == line_of(path, "mode:")


def test_unknown_key_names_the_allowed_keys(conf_dir: Path) -> None:
    path = write(
        conf_dir,
        VALID.replace(
            "    create_user: true\n    models_dir: models/qa",
            "    create_user: true\n    colour: blue\n    models_dir: models/qa",
        ),
    )

    problem = only_problem(
        path,
        r"^unknown key 'colour'; allowed keys here: backoff_initial_s, "
        r"backoff_max_s, .*, user, variants$",
    )

    assert (problem.location, problem.line) == ("tenants.qa.colour", line_of(path, "colour"))


def test_unknown_top_level_key(conf_dir: Path) -> None:
    path = write(conf_dir, VALID + "tennants: {}\n")

    problem = only_problem(
        path,
        r"unknown key 'tennants'; allowed keys here: base_models, "
        r"control, log_backups, log_dir, log_max_bytes, ollama, state_dir, tenants$",
    )

    assert problem.line == line_of(path, "tennants")


def test_missing_required_key(conf_dir: Path) -> None:
    path = write(conf_dir, VALID.replace("    models_dir: models/qa\n", ""))

    problem = only_problem(path, r"required key 'models_dir' is missing; add it")

    assert (problem.location, problem.line) == ("tenants.qa.models_dir", line_of(path, "  qa:"))


@pytest.mark.parametrize("name", ["Dev", "1dev", "dev.ops", "a" * 33])
def test_bad_tenant_names(conf_dir: Path, name: str) -> None:
    path = write(conf_dir, VALID.replace("  dev:", f"  {name}:"))

    problem = only_problem(path, rf"tenant name '{name}' is not allowed")

    assert problem.line == line_of(path, f"  {name}:")


def test_root_user_is_refused(conf_dir: Path) -> None:
    path = write(conf_dir, VALID.replace("janus_test_qa", "root"))

    problem = only_problem(path, r"'root' cannot be a tenant user")

    assert problem.location == "tenants.qa.user"


def test_socket_path_must_fit_sun_path(conf_dir: Path) -> None:
    long_name = "s" * 110 + ".sock"
    path = write(conf_dir, VALID.replace("socket: dev.sock", f"socket: {long_name}"))

    problem = only_problem(
        path,
        r"bytes, longer than the 107 bytes a unix socket address holds; "
        r"choose a shorter directory",
    )

    assert (problem.location, problem.line) == ("tenants.dev.socket.path", line_of(path, long_name))


def test_control_socket_must_fit_sun_path(conf_dir: Path) -> None:
    path = write(conf_dir, VALID.replace("socket: ctl.sock", f"socket: {'c' * 110}.sock"))

    assert only_problem(path, r"longer than the 107 bytes").location == "control.socket"


@pytest.mark.parametrize(
    ("variant", "match"),
    [
        ("{name: v}", r"variant 'v' needs exactly one of `modelfile` .* or `from`"),
        ("{name: v, from: b, modelfile: dev.Modelfile}", r"needs exactly one of"),
        ("{name: v, modelfile: dev.Modelfile, system: hi}", r"so system belong in the Modelfile"),
    ],
)
def test_variant_needs_one_source(conf_dir: Path, variant: str, match: str) -> None:
    path = write(
        conf_dir,
        VALID.replace(
            "    variants:\n      - name: dev-variant\n        modelfile: dev.Modelfile",
            f"    variants: [{variant}]",
        ),
    )

    problem = only_problem(path, match)

    assert problem.location == "tenants.dev.variants[0]"


def test_bad_inline_parameters_are_each_located(conf_dir: Path) -> None:
    path = write(
        conf_dir,
        VALID.replace(
            'parameters: {num_ctx: 2048, temperature: 0.2, stop: ["a", "b"], use_mmap: false}',
            "parameters:\n          num_ctx: 1.5\n          temperature: warm\n"
            "          use_mmap: perhaps\n          num_gpus: 1",
        ),
    )

    problems = problems_of(path)

    assert [(p.location, p.line) for p in problems] == [
        ("tenants.qa.variants[0].parameters.num_ctx", line_of(path, "num_ctx")),
        ("tenants.qa.variants[0].parameters.temperature", line_of(path, "temperature")),
        ("tenants.qa.variants[0].parameters.use_mmap", line_of(path, "use_mmap")),
        ("tenants.qa.variants[0].parameters.num_gpus", line_of(path, "num_gpus")),
    ]
    assert [p.message.split(":")[0] for p in problems] == [
        "invalid int value [1.5]",
        "invalid float value [warm]",
        "invalid bool value [perhaps]",
        "unknown parameter 'num_gpus'; known parameters",
    ]


@pytest.mark.parametrize(
    ("port", "match"),
    [
        ("0", r"0 is not a TCP port"),
        ("65536", r"65536 is not a TCP port"),
        ("http", r"valid integer.*got 'http'; write a whole"),
    ],
)
def test_bad_ports(conf_dir: Path, port: str, match: str) -> None:
    path = write(
        conf_dir, VALID.replace("    socket: dev.sock", f"    socket: dev.sock\n    port: {port}")
    )

    assert only_problem(path, match).location == "tenants.dev.port"


@pytest.mark.parametrize("port_range", ["[30000, 20000]", "[0, 10]", "[1, 70000]"])
def test_bad_port_range(conf_dir: Path, port_range: str) -> None:
    path = write(
        conf_dir,
        VALID.replace("  binary: bin/ollama", f"  binary: bin/ollama\n  port_range: {port_range}"),
    )

    problem = only_problem(path, r"is not a port range; write \[low, high\] with 1 <= low <= high")

    assert (problem.location, problem.line) == ("ollama.port_range", line_of(path, "port_range"))


def test_unix_ollama_host_explains_case_c14(conf_dir: Path) -> None:
    path = write(
        conf_dir,
        VALID.replace(
            "    socket: dev.sock",
            "    socket: dev.sock\n    env:\n      OLLAMA_HOST: unix:///run/x.sock",
        ),
    )

    problem = only_problem(
        path,
        r"'unix:///run/x.sock' does not give a unix socket: Ollama "
        r"listens on TCP only and would silently bind 127.0.0.1:11434.*"
        r"collide.*tenant's `socket` setting",
    )

    assert (problem.location, problem.line) == (
        "tenants.dev.env.OLLAMA_HOST",
        line_of(path, "OLLAMA_HOST"),
    )


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("OLLAMA_HOST", "127.0.0.1:9999", r"the daemon sets OLLAMA_HOST"),
        ("OLLAMA_HOST", "unix:///tmp/o.sock", r"silently bind 127.0.0.1:11434"),
        ("OLLAMA_HOST", "/tmp/o.sock", r"silently bind 127.0.0.1:11434"),
        (
            "OLLAMA_MODELS",
            "/srv/models",
            r"the daemon sets OLLAMA_MODELS from the tenant's `models_dir`",
        ),
    ],
)
def test_reserved_variables_in_ollama_env(conf_dir: Path, key: str, value: str, match: str) -> None:
    path = write(
        conf_dir,
        VALID.replace("  binary: bin/ollama", f"  binary: bin/ollama\n  env:\n    {key}: {value}"),
    )

    assert only_problem(path, match).location == f"ollama.env.{key}"


def test_env_values_must_be_strings(conf_dir: Path) -> None:
    path = write(
        conf_dir,
        VALID.replace("    socket: dev.sock", "    socket: dev.sock\n    env: {OLLAMA_NOPRUNE: 1}"),
    )

    only_problem(path, r"Input should be a valid string, got 1; write it as a quoted string")


@pytest.mark.parametrize(
    ("old", "new", "location", "match"),
    [
        (
            "janus_test_qa",
            "janus_test_dev",
            "tenants.qa.user",
            r"'janus_test_dev' is already used by tenant 'dev'; give each tenant its own user",
        ),
        (
            "models_dir: models/qa",
            "models_dir: models/dev",
            "tenants.qa.models_dir",
            r"is already used by tenant 'dev'; give each tenant its own models_dir",
        ),
        (
            "models_dir: models/qa",
            "models_dir: models/dev/qa",
            "tenants.qa.models_dir",
            r"models/dev/qa' lies inside '.*models/dev', the models_dir of tenant 'dev'",
        ),
        (
            "path: qa.sock",
            "path: dev.sock",
            "tenants.qa.socket.path",
            r"dev.sock' is already used by tenant 'dev'; give each tenant its own socket.path",
        ),
        (
            "path: qa.sock",
            "path: ctl.sock",
            "tenants.qa.socket.path",
            r"is the control socket; choose another path",
        ),
        (
            "use_mmap: false}",
            "use_mmap: false}\n      - {name: qa-variant, from: other}",
            "tenants.qa.variants[1].name",
            r"'qa-variant' is already the name of variants\[0\]",
        ),
    ],
)
def test_cross_tenant_conflicts(
    conf_dir: Path, old: str, new: str, location: str, match: str
) -> None:
    path = write(conf_dir, VALID.replace(old, new))

    assert only_problem(path, match).location == location


def test_shared_explicit_port(conf_dir: Path) -> None:
    text = VALID.replace("socket: dev.sock", "socket: dev.sock\n    port: 21500")
    path = write(
        conf_dir,
        text.replace(
            "    variants:\n      - name: qa-variant",
            "    port: 21500\n    variants:\n      - name: qa-variant",
        ),
    )

    problem = only_problem(path, r"21500 is already used by tenant 'dev'")

    assert (problem.location, problem.line) == (
        "tenants.qa.port",
        line_of(path, "port: 21500", nth=2),
    )


def test_modelfile_problem_names_config_location_and_modelfile_line(conf_dir: Path) -> None:
    (conf_dir / "dev.Modelfile").write_text("FROM base\n# ok\nPARAMETER num_ctx big\n")
    path = write(conf_dir, VALID)

    problem = only_problem(
        path,
        rf"^{re.escape(str(conf_dir / 'dev.Modelfile'))}:3: invalid int "
        r"value \[big\]",
    )

    assert (problem.location, problem.line) == (
        "tenants.dev.variants[0].modelfile",
        line_of(path, "dev.Modelfile"),
    )


@pytest.mark.parametrize(
    ("modelfile", "match"),
    [("missing.Modelfile", "Modelfile not found"), (".", "is a directory, not a Modelfile")],
)
def test_unreadable_modelfile(conf_dir: Path, modelfile: str, match: str) -> None:
    path = write(conf_dir, VALID.replace("modelfile: dev.Modelfile", f"modelfile: {modelfile}"))

    assert only_problem(path, match).location == "tenants.dev.variants[0].modelfile"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_modelfile_without_read_permission(conf_dir: Path) -> None:
    (conf_dir / "dev.Modelfile").chmod(0)
    path = write(conf_dir, VALID)

    only_problem(path, r"cannot read the Modelfile \(Permission denied\)")


def test_missing_inline_adapter(conf_dir: Path) -> None:
    path = write(conf_dir, VALID.replace("        system: terse", "        adapters: [lora.gguf]"))

    assert only_problem(path, r"lora.gguf' does not exist").location == (
        "tenants.qa.variants[0].adapters[0]"
    )


# ---- the file itself ----------------------------------------------------------------------


def test_yaml_syntax_error_has_a_line(conf_dir: Path) -> None:
    path = write(conf_dir, VALID.replace("    user: janus_test_qa", "    user: [janus_test_qa"))

    problem = only_problem(path, r"^YAML syntax error: .*; fix the indentation or quoting there")

    assert problem.line is not None and problem.line >= line_of(path, "[janus_test_qa")


def test_duplicate_key_is_reported(conf_dir: Path) -> None:
    path = write(
        conf_dir,
        VALID.replace(
            "    create_user: true\n    models_dir: models/qa",
            "    create_user: true\n    create_user: false\n    models_dir: models/qa",
        ),
    )

    problem = only_problem(path, r"key 'create_user' appears twice \(lines \d+ and \d+\); keep one")

    assert problem.line == line_of(path, "create_user: false")


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("empty.yaml", "", r"must be a mapping with at least a `tenants:` key"),
        ("list.yaml", "- a\n", r"must be a mapping"),
        ("no-tenants.yaml", "state_dir: /x\n", r"required key 'tenants' is missing"),
    ],
)
def test_file_shapes(tmp_path: Path, name: str, text: str, match: str) -> None:
    only_problem(write(tmp_path, text, name), match)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the configuration file \(No such file"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match=r"cannot read the configuration file \(Is a directory"):
        load_config(tmp_path)


def test_every_problem_is_reported_at_once(conf_dir: Path) -> None:
    text = (
        VALID.replace("socket: ctl.sock", "socket: ctl.sock\n  mode: 660")
        .replace("  dev:", "  Dev:")
        .replace(
            "    create_user: true\n    models_dir: models/qa",
            "    create_user: true\n    colour: blue\n    models_dir: models/qa",
        )
        .replace("num_ctx: 2048", "num_ctx: lots")
        .replace(
            "    socket: dev.sock", "    socket: dev.sock\n    env: {OLLAMA_HOST: 'unix:///x'}"
        )
    )
    path = write(conf_dir, text)

    problems = problems_of(path)

    assert [(p.location, p.line) for p in problems] == [
        ("control.mode", line_of(path, "mode: 660")),
        ("tenants.Dev", line_of(path, "Dev:")),
        ("tenants.Dev.env.OLLAMA_HOST", line_of(path, "OLLAMA_HOST")),
        ("tenants.qa.colour", line_of(path, "colour")),
        ("tenants.qa.variants[0].parameters.num_ctx", line_of(path, "num_ctx")),
    ]
    assert all(p.file == str(path) for p in problems)


def test_cross_checks_still_run_when_another_tenant_is_invalid(conf_dir: Path) -> None:
    text = VALID.replace("janus_test_qa", "janus_test_dev").replace('mode: "0600"', "mode: 9")
    path = write(
        conf_dir,
        text + "  ops:\n    user: janus_test_ops\n    models_dir: models/dev\n"
        "    socket: ops.sock\n",
    )

    assert [p.location for p in problems_of(path)] == [
        "tenants.qa.user",
        "tenants.qa.socket.mode",
        "tenants.ops.models_dir",
    ]


# ---- the machine --------------------------------------------------------------------------


def test_check_system_accepts_a_ready_machine(conf_dir: Path) -> None:
    assert check_system(load_config(write(conf_dir, VALID)), as_root=os.geteuid() == 0) == []


def test_check_system_finds_missing_pieces(conf_dir: Path) -> None:
    (conf_dir / "bin" / "ollama").chmod(0o644)
    text = VALID.replace(
        "  binary: bin/ollama",
        "  binary: bin/ollama\n"
        "base_models:\n  base:\n    gguf: weights/base.gguf\n"
        "    projector: bin\n",
    )
    text = text.replace("socket: ctl.sock", "socket: ctl.sock\n  admin_group: janus_no_such_group")
    text = text.replace(
        '      mode: "0600"', '      mode: "0600"\n      owner: janus_no_such_owner'
    )
    path = write(
        conf_dir,
        text.replace(
            "user: janus_test_qa\n    create_user: true",
            "user: janus_no_such_user\n    create_user: false",
        ),
    )

    problems = check_system(load_config(path), as_root=True)

    assert [(p.location, p.line) for p in problems] == [
        ("ollama.binary", line_of(path, "binary:")),
        ("control.admin_group", line_of(path, "admin_group")),
        ("base_models.base.gguf", line_of(path, "gguf:")),
        ("base_models.base.projector", line_of(path, "projector:")),
        ("tenants.qa.user", line_of(path, "janus_no_such_user")),
        ("tenants.qa.socket.owner", line_of(path, "janus_no_such_owner")),
    ]
    assert "'janus_no_such_user' does not exist; create it (useradd --system" in problems[4].message
    assert "or set create_user: true" in problems[4].message


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_check_system_unprivileged_needs_writable_directories(conf_dir: Path) -> None:
    path = write(conf_dir, VALID.replace("state_dir: state", "state_dir: /proc/janus"))

    problems = check_system(load_config(path), as_root=False)

    assert [p.location for p in problems] == ["state_dir"]
    assert "cannot be created or written without root" in problems[0].message


# ---- janus-supervisord --check --------------------------------------------------------------

BROKEN = {
    "unknown-key": (
        (
            "    create_user: true\n    models_dir: models/qa",
            "    create_user: true\n    colour: blue\n    models_dir: models/qa",
        ),
        "colour",
        r"tenants\.qa\.colour: unknown key 'colour'",
    ),
    "missing-user": (
        (
            "user: janus_test_qa\n    create_user: true",
            "user: janus_no_such_user\n    create_user: false",
        ),
        "janus_no_such_user",
        r"tenants\.qa\.user: user 'janus_no_such_user' does not",
    ),
    "bad-mode": (
        ('mode: "0600"', "mode: 600"),
        "mode: 600",
        r"tenants\.qa\.socket\.mode: 600 is read as a decimal number",
    ),
    "duplicate-socket": (
        ("path: qa.sock", "path: dev.sock"),
        "path: dev.sock",
        r"tenants\.qa\.socket\.path: '.*dev\.sock' is already used by tenant",
    ),
    "unreadable-modelfile": (
        ("modelfile: dev.Modelfile", "modelfile: gone.Modelfile"),
        "gone.Modelfile",
        (
            r"tenants\.dev\.variants\[0\]\.modelfile: .*gone\.Modelfile: "
            r"Modelfile not found"
        ),
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_check_prints_a_located_error_and_exits_2(conf_dir: Path, case: str) -> None:
    (old, new), marker, match = BROKEN[case]
    path = write(conf_dir, VALID.replace(old, new))
    out = io.StringIO()

    status = run_check(path, as_root=os.geteuid() == 0, out=out)

    lines = out.getvalue().splitlines()
    assert status == 2
    assert re.match(rf"^{re.escape(str(path))}:{line_of(path, marker)}: {match}", lines[0]), lines
    assert lines[-1] == f"{path}: 1 problem(s); nothing was started"


def test_check_reports_every_problem_then_exits_2(conf_dir: Path) -> None:
    text = VALID
    for case in ("unknown-key", "bad-mode", "duplicate-socket", "unreadable-modelfile"):
        old, new = BROKEN[case][0]
        text = text.replace(old, new)
    out = io.StringIO()

    assert run_check(write(conf_dir, text), as_root=True, out=out) == 2
    assert [line.split(": ")[1] for line in out.getvalue().splitlines()[:-1]] == [
        "tenants.dev.variants[0].modelfile",
        "tenants.qa.colour",
        "tenants.qa.socket.path",
        "tenants.qa.socket.mode",
    ]
    assert out.getvalue().splitlines()[-1].endswith(": 4 problem(s); nothing was started")


def test_check_of_a_valid_file_exits_0(conf_dir: Path) -> None:
    path = write(conf_dir, VALID)
    out = io.StringIO()

    assert run_check(path, as_root=os.geteuid() == 0, out=out) == 0
    assert out.getvalue() == f"{path}: configuration OK (2 tenants: dev, qa)\n"


def test_config_model_still_builds_from_python() -> None:
    config = Config.model_validate(
        {"tenants": {"t": {"user": "u", "models_dir": "/m", "socket": "/run/t.sock"}}}
    )

    assert config.tenants["t"].socket.path == Path("/run/t.sock")
    assert config.control.mode == 0o660 and config.source is None
