"""Modelfile parsing and the /api/create requests built from it (reference facts §8)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from supervisor import modelfile
from supervisor.errors import ConfigError
from supervisor.modelfile import ModelfileError, modelfile_request, parse_modelfile

GGUF = b"GGUF\x03\x00\x00\x00" + b"\x00" * 24
PROJECTOR = b"GGUF\x03\x00\x00\x00" + b"\x01" * 24
ADAPTER = b"GGUF\x03\x00\x00\x00" + b"\x02" * 24


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


DEV_SYSTEM = (
    "Describe uploaded images in words only. Do not generate images, do not output base64,\n"
    "never write <image> tags. Keep answers short and factual."
)

# (id, Modelfile text, extra files next to it, expected request without "model")
CASES: list[tuple[str, str, dict[str, bytes], dict[str, Any]]] = [
    (
        "facts-example",
        (
            "FROM llama3.2\nPARAMETER num_ctx 8192\nPARAMETER temperature 0.2\n"
            'PARAMETER stop "<|eot_id|>"\nPARAMETER stop "User:"\nSYSTEM """You are terse."""\n'
        ),
        {},
        {
            "from": "llama3.2",
            "system": "You are terse.",
            "parameters": {"num_ctx": 8192, "temperature": 0.2, "stop": ["<|eot_id|>", "User:"]},
        },
    ),
    ("tutorial-admin", "FROM janus-pro-7b\n", {}, {"from": "janus-pro-7b"}),
    (
        "tutorial-dev",
        f'FROM janus-pro-7b\nSYSTEM """{DEV_SYSTEM}"""\n',
        {},
        {"from": "janus-pro-7b", "system": DEV_SYSTEM},
    ),
    (
        "tutorial-qa",
        (
            "FROM janus-pro-7b\nPARAMETER num_ctx 2048\n"
            'SYSTEM "You are a text-only assistant. Ignore images. Answer in Chinese."\n'
        ),
        {},
        {
            "from": "janus-pro-7b",
            "parameters": {"num_ctx": 2048},
            "system": "You are a text-only assistant. Ignore images. Answer in Chinese.",
        },
    ),
    (
        "triple-quotes-span-lines",
        (
            'FROM m\nTEMPLATE """{{ if .System }}<|system|>\n{{ .System }}{{ end }}\n'
            '<|user|> "{{ .Prompt }}"\n"""\nSYSTEM """\n  indented\n"""\n'
        ),
        {},
        {
            "from": "m",
            "template": "{{ if .System }}<|system|>\n{{ .System }}{{ end }}\n"
            '<|user|> "{{ .Prompt }}"\n',
            "system": "\n  indented\n",
        },
    ),
    (
        "plain-quotes-span-lines-too",
        'FROM m\nSYSTEM "first\nsecond"\n',
        {},
        {"from": "m", "system": "first\nsecond"},
    ),
    (
        "case-insensitive-instructions",
        "from m\nSyStEm be brief\nparameter seed 42\nTemplate {{ .Prompt }}\n",
        {},
        {
            "from": "m",
            "system": "be brief",
            "parameters": {"seed": 42},
            "template": "{{ .Prompt }}",
        },
    ),
    (
        "repeated-stop-and-types",
        (
            'FROM m\nPARAMETER stop <|end|>\nPARAMETER stop User:\nPARAMETER stop "a b"\n'
            "PARAMETER use_mmap F\nPARAMETER top_k 40\nPARAMETER min_p .05\n"
            "PARAMETER num_predict -1\nPARAMETER repeat_penalty 1\nPARAMETER top_p 0.1234567891\n"
        ),
        {},
        {
            "from": "m",
            "parameters": {
                "stop": ["<|end|>", "User:", "a b"],
                "use_mmap": False,
                "top_k": 40,
                "min_p": 0.05,
                "num_predict": -1,
                "repeat_penalty": 1.0,
                "top_p": 0.12345679,
            },
        },
    ),
    (
        "deprecated-parameters-dropped",
        (
            "FROM m\nPARAMETER mirostat 2\nPARAMETER penalize_newline true\n"
            "PARAMETER num_ctx 4096\nPARAMETER use_mlock true\n"
        ),
        {},
        {"from": "m", "parameters": {"num_ctx": 4096}},
    ),
    (
        "comments-blank-lines-and-hash-in-value",
        "# a comment\n\n   # indented comment\nFROM m\n\nSYSTEM use # freely  \n# end\n",
        {},
        {"from": "m", "system": "use # freely"},
    ),
    (
        "local-gguf-from",
        "FROM ./weights.gguf\nSYSTEM hi\n",
        {"weights.gguf": GGUF},
        {"files": {"weights.gguf": sha(GGUF)}, "system": "hi"},
    ),
    (
        "two-from-lines-merge-files",
        "FROM weights.gguf\nFROM mmproj.gguf\n",
        {"weights.gguf": GGUF, "mmproj.gguf": PROJECTOR},
        {"files": {"weights.gguf": sha(GGUF), "mmproj.gguf": sha(PROJECTOR)}},
    ),
    (
        "from-name-and-adapter",
        "FROM llama3.2:1b\nADAPTER lora.gguf\n",
        {"lora.gguf": ADAPTER},
        {"from": "llama3.2:1b", "adapters": {"lora.gguf": sha(ADAPTER)}},
    ),
    (
        "message",
        (
            "FROM m\nMESSAGE user Is Toronto in Canada?\nMESSAGE assistant yes\n"
            'MESSAGE system "Be nice."\n'
        ),
        {},
        {
            "from": "m",
            "messages": [
                {"role": "user", "content": "Is Toronto in Canada?"},
                {"role": "assistant", "content": "yes"},
                {"role": "system", "content": "Be nice."},
            ],
        },
    ),
    (
        "license-twice",
        'FROM m\nLICENSE MIT\nLICENSE """Apache License\nVersion 2.0"""\n',
        {},
        {"from": "m", "license": ["MIT", "Apache License\nVersion 2.0"]},
    ),
    (
        "requires-with-and-without-v",
        "FROM m\nREQUIRES v0.14.0\n",
        {},
        {"from": "m", "requires": "0.14.0"},
    ),
    ("requires-short-form", "FROM m\nREQUIRES 0.5\n", {}, {"from": "m", "requires": "0.5"}),
    (
        "renderer-parser-and-empty-system-omitted",
        'FROM m\nRENDERER qwen3-coder\nPARSER qwen3-coder\nSYSTEM ""\n',
        {},
        {"from": "m", "renderer": "qwen3-coder", "parser": "qwen3-coder"},
    ),
    (
        "crlf-line-endings",
        "FROM m\r\nPARAMETER num_ctx 1024\r\nSYSTEM terse\r\n",
        {},
        {"from": "m", "parameters": {"num_ctx": 1024}, "system": "terse"},
    ),
    (
        "last-system-wins",
        "FROM m\nSYSTEM one\nSYSTEM two\n",
        {},
        {"from": "m", "system": "two"},
    ),
]


def write_case(tmp_path: Path, text: str, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    path = tmp_path / "Modelfile"
    path.write_bytes(text.encode())
    return path


@pytest.mark.parametrize(
    ("text", "files", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_request_matches_ollama_create(
    tmp_path: Path, text: str, files: dict[str, bytes], expected: dict[str, Any]
) -> None:
    path = write_case(tmp_path, text, files)

    plan = modelfile_request(path, "mymodel")

    assert plan.request == {"model": "mymodel", **expected}
    assert "stream" not in plan.request


def test_local_files_are_listed_for_upload(tmp_path: Path) -> None:
    path = write_case(
        tmp_path,
        "FROM w.gguf\nFROM p.gguf\nADAPTER a.gguf\n",
        {"w.gguf": GGUF, "p.gguf": PROJECTOR, "a.gguf": ADAPTER},
    )

    plan = modelfile_request(path, "m")

    assert plan.files == {"w.gguf": tmp_path / "w.gguf", "p.gguf": tmp_path / "p.gguf"}
    assert plan.adapters == {"a.gguf": tmp_path / "a.gguf"}
    assert plan.uploads() == {
        sha(GGUF): tmp_path / "w.gguf",
        sha(PROJECTOR): tmp_path / "p.gguf",
        sha(ADAPTER): tmp_path / "a.gguf",
    }


def test_files_in_different_directories_are_named_from_their_common_root(tmp_path: Path) -> None:
    path = write_case(
        tmp_path,
        "FROM w/model.gguf\nFROM p/mmproj.gguf\n",
        {"w/model.gguf": GGUF, "p/mmproj.gguf": PROJECTOR},
    )

    plan = modelfile_request(path, "m")

    assert plan.request["files"] == {"w/model.gguf": sha(GGUF), "p/mmproj.gguf": sha(PROJECTOR)}


def test_directory_import_takes_weights_and_json(tmp_path: Path) -> None:
    files = {
        "hf/model.safetensors": b"st",
        "hf/config.json": b"{}",
        "hf/tokenizer.json": b"{}",
        "hf/README.md": b"no",
    }
    path = write_case(tmp_path, "FROM ./hf\n", files)

    plan = modelfile_request(path, "m")

    assert plan.request["files"] == {
        "model.safetensors": sha(b"st"),
        "config.json": sha(b"{}"),
        "tokenizer.json": sha(b"{}"),
    }


def test_from_path_is_relative_to_the_modelfile_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = tmp_path / "mf"
    sub.mkdir()
    path = write_case(sub, "FROM w.gguf\n", {"w.gguf": GGUF})
    (tmp_path / "w.gguf").write_bytes(b"other")
    monkeypatch.chdir(tmp_path)

    assert modelfile_request(path, "m").request["files"] == {"w.gguf": sha(GGUF)}


def test_deprecated_parameter_warns_with_file_and_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_case(tmp_path, "FROM m\n\nPARAMETER mirostat_eta 0.1\n", {})

    with caplog.at_level(logging.WARNING, logger="supervisor.modelfile"):
        parse_modelfile(path)

    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert f"{path}:3: PARAMETER mirostat_eta is deprecated" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("text", "match", "line"),
    [
        ("FROM m\nPARAMETER num_ctx abc\n", r"invalid int value \[abc\]", 2),
        ("FROM m\nPARAMETER num_ctx 1.5\n", r"invalid int value \[1\.5\]", 2),
        ("FROM m\n\nPARAMETER temperature warm\n", r"invalid float value \[warm\]", 3),
        ("FROM m\nPARAMETER temperature 1e39\n", r"invalid float value", 2),
        ("FROM m\nPARAMETER use_mmap yes\n", r"invalid bool value \[yes\]", 2),
        ("FROM m\nPARAMETER Num_Ctx 4\n", r"unknown parameter 'Num_Ctx'", 2),
        ("FROM m\nPARAMETER num-ctx 4\n", r"invalid character '-' in PARAMETER name 'num'", 2),
        ("FROM m\nPARAMETER num_ctx\n", r"PARAMETER num_ctx needs a value", 2),
        ("SYSTEM hello\n", r"no FROM line", None),
        ("# only a comment\n", r"no FROM line", None),
        (
            "FROM m\n\nINCLUDE other\n",
            r'command must be one of "from", "license", .*"requires", not \'INCLUDE\'',
            3,
        ),
        (
            "FROM m\nMESSAGE robot hi\n",
            r'message role must be one of "system", "user", or "assistant"',
            2,
        ),
        ("FROM m\nMESSAGE User hi\n", r"message role must be one of", 2),
        (
            'FROM m\nSYSTEM """never\nclosed\n',
            r"unexpected EOF.*never closed; end it with \"\"\"",
            2,
        ),
        ('FROM m\nSYSTEM "open\n', r"unexpected EOF", 2),
        ('FROM m\nSYSTEM """a""" trailing\n', r"unexpected EOF", 2),
        ("FROM\n", r"FROM needs a value on the same line", 1),
        ("FROM m\nREQUIRES 1.x\n", r"requires must be a valid semver \(e\.g\. 0\.14\.0\)", 2),
        ("FROM m\nREQUIRES 01.2.3\n", r"requires must be a valid semver", 2),
        ("FROM m\nREQUIRES 1.2-beta\n", r"requires must be a valid semver", 2),
    ],
)
def test_parse_errors_carry_path_and_line(
    tmp_path: Path, text: str, match: str, line: int | None
) -> None:
    path = write_case(tmp_path, text, {})

    with pytest.raises(ModelfileError, match=match) as info:
        parse_modelfile(path)

    assert (info.value.path, info.value.line) == (path, line)
    assert isinstance(info.value, ConfigError)
    assert info.value.problems[0].file == str(path)


@pytest.mark.parametrize(
    ("text", "files", "match", "line"),
    [
        (
            "FROM m\n\nADAPTER ./missing.gguf\n",
            {},
            r"ADAPTER ./missing.gguf: .*missing.gguf does not exist",
            3,
        ),
        ("FROM m\nDRAFT gone.gguf\n", {}, r"DRAFT gone.gguf: .* does not exist", 2),
        (
            "FROM ./empty\n",
            {"empty/notes.txt": b"x"},
            r"no Modelfile or safetensors files found",
            1,
        ),
        ("FROM w.gguf\nDRAFT w.gguf\n", {"w.gguf": GGUF}, r"DRAFT must not reference the same", 2),
    ],
)
def test_local_path_errors(
    tmp_path: Path, text: str, files: dict[str, bytes], match: str, line: int
) -> None:
    path = write_case(tmp_path, text, files)

    with pytest.raises(ModelfileError, match=match) as info:
        modelfile.check_modelfile(path)

    assert info.value.line == line


def test_missing_and_unreadable_modelfile(tmp_path: Path) -> None:
    with pytest.raises(ModelfileError, match="Modelfile not found"):
        parse_modelfile(tmp_path / "nope.Modelfile")
    with pytest.raises(ModelfileError, match="is a directory"):
        parse_modelfile(tmp_path)


@pytest.mark.parametrize("value", ["1", "t", "T", "TRUE", "true", "True"])
def test_parse_bool_true_forms(value: str) -> None:
    assert modelfile.type_parameter("use_mmap", value) is True


@pytest.mark.parametrize("value", ["0", "f", "F", "FALSE", "false", "False"])
def test_parse_bool_false_forms(value: str) -> None:
    assert modelfile.type_parameter("use_mmap", value) is False


@pytest.mark.parametrize("value", ["9223372036854775808", "1_000", " 1", "0x10", ""])
def test_int_values_go_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="invalid int value"):
        modelfile.type_parameter("num_ctx", value)


def test_utf16_bom_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "Modelfile"
    path.write_bytes(b"\xff\xfe" + "FROM m\nSYSTEM 你好\n".encode("utf-16-le"))

    assert modelfile_request(path, "x").request == {"model": "x", "from": "m", "system": "你好"}


def test_parse_is_cached_until_the_file_changes(tmp_path: Path) -> None:
    path = write_case(tmp_path, "FROM m\nSYSTEM one\n", {})
    first = parse_modelfile(path)

    assert parse_modelfile(path) is first

    path.write_text("FROM m\nSYSTEM second\n")
    os.utime(path, ns=(1, 1))
    assert parse_modelfile(path).system == "second"


def test_digest_is_recomputed_when_the_file_changes(tmp_path: Path) -> None:
    path = write_case(tmp_path, "FROM w.gguf\n", {"w.gguf": GGUF})
    assert modelfile_request(path, "m").request["files"] == {"w.gguf": sha(GGUF)}

    (tmp_path / "w.gguf").write_bytes(PROJECTOR)

    assert modelfile_request(path, "m").request["files"] == {"w.gguf": sha(PROJECTOR)}


def test_inline_parameters_use_the_same_typing() -> None:
    typed = modelfile.type_parameters(
        {
            "num_ctx": 2048,
            "temperature": 0.2,
            "stop": ["a", "b"],
            "use_mmap": False,
            "seed": "7",
            "mirostat": 1,
        },
        where="test",
        warn=False,
    )

    assert typed == {
        "num_ctx": 2048,
        "temperature": 0.2,
        "stop": ["a", "b"],
        "use_mmap": False,
        "seed": 7,
    }


def test_inline_parameter_errors_are_all_reported() -> None:
    with pytest.raises(modelfile.ParameterErrors) as info:
        modelfile.type_parameters({"num_ctx": 1.5, "top_k": [1, 2], "foo": 1}, where="t")

    assert [key for key, _ in info.value.items] == ["num_ctx", "top_k", "foo"]
    assert "invalid int value [1.5]" in info.value.items[0][1]
    assert "unknown parameter 'foo'" in info.value.items[2][1]


def test_base_model_request_imports_gguf_and_projector(tmp_path: Path) -> None:
    from supervisor.config import Config

    (tmp_path / "base.gguf").write_bytes(GGUF)
    (tmp_path / "mmproj.gguf").write_bytes(PROJECTOR)
    config = Config.model_validate(
        {
            "base_models": {
                "janus-pro-7b": {
                    "gguf": str(tmp_path / "base.gguf"),
                    "projector": str(tmp_path / "mmproj.gguf"),
                    "template": "{{ .Prompt }}",
                }
            },
            "tenants": {},
        }
    )

    plan = modelfile.base_model_request(config, "janus-pro-7b")

    assert plan.request == {
        "model": "janus-pro-7b",
        "template": "{{ .Prompt }}",
        "files": {"base.gguf": sha(GGUF), "mmproj.gguf": sha(PROJECTOR)},
    }
    assert plan.files == {
        "base.gguf": tmp_path / "base.gguf",
        "mmproj.gguf": tmp_path / "mmproj.gguf",
    }


def test_inline_variant_adapters_are_uploaded(tmp_path: Path) -> None:
    from supervisor.config import Config

    (tmp_path / "lora.gguf").write_bytes(ADAPTER)
    config = Config.model_validate(
        {
            "tenants": {
                "t": {
                    "user": "u",
                    "models_dir": "/m",
                    "socket": "/run/t.sock",
                    "variants": [
                        {
                            "name": "v",
                            "from": "b",
                            "adapters": [str(tmp_path / "lora.gguf")],
                            "license": ["MIT"],
                            "messages": [{"role": "user", "content": "hi"}],
                        }
                    ],
                }
            }
        }
    )

    plan = modelfile.variant_request(config, "t", config.tenants["t"].variants[0])

    assert plan.request == {
        "model": "v",
        "from": "b",
        "adapters": {"lora.gguf": sha(ADAPTER)},
        "license": ["MIT"],
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert plan.uploads() == {sha(ADAPTER): tmp_path / "lora.gguf"}
