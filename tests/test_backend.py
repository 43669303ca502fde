"""Choosing a tenant's network and backend address (``network: host`` ports, defaults)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from supervisor.backend import (
    HostBackend,
    NetnsBackend,
    allocate_backend,
    network_mode,
    network_note,
)
from supervisor.errors import SpawnError


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize(
    ("configured", "root", "wanted"),
    [
        (None, True, "isolated"),
        (None, False, "host"),
        ("host", True, "host"),
        ("isolated", True, "isolated"),
        ("isolated", False, "host"),
    ],
)
def test_network_mode_defaults_to_isolated_only_as_root(
    configured: str | None, root: bool, wanted: str
) -> None:
    assert network_mode(configured, root=root) == wanted  # type: ignore[arg-type]


def test_isolated_without_root_is_explained() -> None:
    note = network_note("dev", "isolated", None, root=False)

    assert note is not None
    assert note.startswith("tenant dev: network: isolated needs root")
    assert "any local user can reach its backend port" in note


def test_port_of_an_isolated_tenant_is_reported_unused() -> None:
    note = network_note("dev", None, 21500, root=True)

    assert note is not None and "port 21500 is not used" in note


@pytest.mark.parametrize(
    ("configured", "port", "root"),
    [(None, None, True), ("host", 21500, True), (None, 21500, False)],
)
def test_nothing_to_say_when_the_config_is_followed(
    configured: str | None, port: int | None, root: bool
) -> None:
    assert network_note("dev", configured, port, root=root) is None  # type: ignore[arg-type]


def test_configured_port_taken_names_its_holder(busy_port: int) -> None:
    with pytest.raises(SpawnError) as caught:
        allocate_backend("dev", busy_port, (21434, 21533), [])

    message = str(caught.value)
    assert message.startswith(f"tenant dev: backend port {busy_port} is taken by pid {os.getpid()}")
    assert message.endswith("free it or choose another port")


def test_range_skips_busy_and_taken_ports(busy_port: int) -> None:
    backend = allocate_backend("dev", None, (busy_port, busy_port + 2), [busy_port + 1])

    assert backend.port not in (busy_port, busy_port + 1)
    assert backend.address == f"127.0.0.1:{backend.port}"


def test_full_range_is_an_error_naming_the_range(busy_port: int) -> None:
    with pytest.raises(
        SpawnError,
        match=rf"no free loopback port in ollama.port_range "
        rf"{busy_port}-{busy_port}; widen the range",
    ):
        allocate_backend("dev", None, (busy_port, busy_port), [])


def test_host_backend_takes_a_host_port_and_a_netns_backend_none() -> None:
    host = HostBackend("127.0.0.1", 21500)
    isolated = NetnsBackend("dev")

    assert (host.host_port, host.isolated, host.ollama_host) == (21500, False, "127.0.0.1:21500")
    assert (isolated.host_port, isolated.isolated, isolated.ollama_host) == (
        None,
        True,
        "127.0.0.1:11434",
    )
