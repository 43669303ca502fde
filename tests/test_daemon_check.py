"""``janus-supervisord --config X --check`` on the shipped configs and on broken ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor.daemon", "--config", str(config), "--check"],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )


def demo_copy(tmp_path: Path) -> dict:  # type: ignore[type-arg]
    config = yaml.safe_load((REPO / "conf" / "demo.yaml").read_text())
    config["ollama"]["binary"] = str(REPO / "tools" / "ollama-emulator")
    config["base_models"]["janus-pro-7b"]["gguf"] = str(REPO / "conf" / "demo" /
                                                       "janus-pro-7b-demo.gguf")
    config["control"]["socket"] = str(tmp_path / "c.sock")
    for name, tenant in config["tenants"].items():
        tenant["models_dir"] = str(tmp_path / name)
        tenant["socket"] = str(tmp_path / f"{name}.sock")
        for variant in tenant["variants"]:
            variant["modelfile"] = str(REPO / "conf" / variant["modelfile"])
    return config


def write(tmp_path: Path, config: dict, text: str | None = None) -> Path:  # type: ignore[type-arg]
    path = tmp_path / "janus.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(config, sort_keys=False))
    return path


def test_demo_config_passes_check() -> None:
    result = check(REPO / "conf" / "demo.yaml")

    assert result.returncode == 0, result.stdout + result.stderr


def test_unknown_key_is_located(tmp_path: Path) -> None:
    config = demo_copy(tmp_path)
    config["tenants"]["dev"]["colour"] = "blue"

    result = check(write(tmp_path, config))

    assert result.returncode == 2
    assert "janus.yaml:" in result.stdout and "tenants.dev.colour" in result.stdout


def test_missing_user_is_located(tmp_path: Path) -> None:
    config = demo_copy(tmp_path)
    config["tenants"]["qa"]["user"] = "no_such_user_janus"
    config["tenants"]["qa"]["create_user"] = False

    result = check(write(tmp_path, config))

    assert result.returncode == 2
    assert "tenants.qa.user" in result.stdout and "no_such_user_janus" in result.stdout


def test_bad_mode_is_located(tmp_path: Path) -> None:
    config = demo_copy(tmp_path)
    config["tenants"]["admin"]["socket"] = {"path": str(tmp_path / "a.sock"), "mode": "0999"}

    result = check(write(tmp_path, config))

    assert result.returncode == 2
    assert "tenants.admin.socket.mode" in result.stdout and "0999" in result.stdout


def test_duplicate_socket_path_is_located(tmp_path: Path) -> None:
    config = demo_copy(tmp_path)
    config["tenants"]["qa"]["socket"] = config["tenants"]["dev"]["socket"]

    result = check(write(tmp_path, config))

    assert result.returncode == 2
    assert "tenants.qa.socket" in result.stdout and "dev" in result.stdout


def test_unreadable_modelfile_is_located(tmp_path: Path) -> None:
    config = demo_copy(tmp_path)
    config["tenants"]["dev"]["variants"][0]["modelfile"] = str(tmp_path / "missing.Modelfile")

    result = check(write(tmp_path, config))

    assert result.returncode == 2
    assert "tenants.dev.variants[0].modelfile" in result.stdout
    assert "missing.Modelfile" in result.stdout


@pytest.mark.parametrize("value", ["unix:///run/x.sock", "127.0.0.1:11434"])
def test_ollama_host_in_env_is_refused(tmp_path: Path, value: str) -> None:
    """Case C14."""
    config = demo_copy(tmp_path)
    config["tenants"]["dev"]["env"] = {"OLLAMA_HOST": value}

    result = check(write(tmp_path, config))

    assert result.returncode == 2
    assert "tenants.dev.env" in result.stdout and "OLLAMA_HOST" in result.stdout
    assert "socket" in result.stdout


def test_daemon_refuses_to_start_on_invalid_config(tmp_path: Path) -> None:
    config = demo_copy(tmp_path)
    config["tenants"]["dev"]["colour"] = "blue"

    result = subprocess.run(
        [sys.executable, "-m", "supervisor.daemon", "--config", str(write(tmp_path, config))],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )

    assert result.returncode == 2
    assert "tenants.dev.colour" in result.stderr
    assert not (tmp_path / "c.sock").exists()
