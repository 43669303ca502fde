"""Config-load refusals and the ``network`` key (issue 3): what isolation needs from the file."""

from __future__ import annotations

import pwd
from pathlib import Path

import pytest

from supervisor import config
from supervisor.config import load_config
from tests.test_config import VALID, conf_dir, only_problem, write

__all__ = ["conf_dir"]


def with_dev(lines: str) -> str:
    return VALID.replace("    socket: dev.sock", f"    socket: dev.sock\n{lines}")


@pytest.mark.parametrize("network", ["isolated", "host"])
def test_network_accepts_isolated_and_host(conf_dir: Path, network: str) -> None:
    loaded = load_config(write(conf_dir, with_dev(f"    network: {network}")))

    assert loaded.tenants["dev"].network == network
    assert loaded.tenants["qa"].network is None  # decided at start: isolated as root


def test_unknown_network_is_refused_with_the_choices(conf_dir: Path) -> None:
    path = write(conf_dir, with_dev("    network: bridge"))

    problem = only_problem(path, r"'isolated' or 'host'")

    assert problem.location == "tenants.dev.network"


def test_port_with_isolated_network_is_refused(conf_dir: Path) -> None:
    path = write(conf_dir, with_dev("    network: isolated\n    port: 21500"))

    problem = only_problem(path, r"21500: port applies to network: host only; .* Remove port")

    assert problem.location == "tenants.dev.port"


def test_host_tenants_never_share_a_port(conf_dir: Path) -> None:
    text = with_dev("    network: host\n    port: 21500")
    text = text.replace("    socket:\n      path: qa.sock",
                        "    network: host\n    port: 21500\n    socket:\n      path: qa.sock")

    problem = only_problem(write(conf_dir, text), r"21500 is already used by tenant 'dev'")

    assert problem.location == "tenants.qa.port"


def test_another_name_for_uid_0_is_refused(conf_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toor = pwd.struct_passwd(("janus_test_dev", "x", 0, 0, "", "/root", "/bin/sh"))
    monkeypatch.setattr(config, "_user", lambda name: toor if name == toor.pw_name else None)

    problem = only_problem(write(conf_dir, VALID), r"'janus_test_dev' has uid 0; tenants never")

    assert problem.location == "tenants.dev.user"
