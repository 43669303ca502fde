"""Reload planning and applying: each tenant gets exactly the action its change needs (C12)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import yaml

from supervisor import reload
from supervisor.config import Config, load_config
from supervisor.errors import ConfigError, SpawnError, SupervisorError
from supervisor.reload import (
    Action,
    ReloadPlan,
    TenantChange,
    apply_plan,
    load_new_config,
    plan_reload,
    wanted_requests,
)


def tenant(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "user": f"janus_{name}",
        "models_dir": f"stores/{name}",
        "socket": f"run/{name}.sock",
        **extra,
    }


def base_data(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "prod.Modelfile").write_text("FROM janus-pro-7b\nPARAMETER num_ctx 2048\n")
    return {
        "control": {"socket": str(tmp_path / "run" / "control.sock")},
        "ollama": {"binary": "/bin/true"},
        "tenants": {
            "dev": tenant("dev", probe_period_s=10),
            "stage": tenant("stage"),
            "prod": tenant("prod", variants=[{"name": "prod-v", "modelfile": "prod.Modelfile"}]),
        },
    }


def load(tmp_path: Path, data: dict[str, Any], name: str = "janus.yaml") -> Config:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def built_by(config: Config) -> dict[str, Any]:
    """What each tenant built from ``config`` (the daemon records this at provisioning)."""
    return {name: wanted_requests(config, name) for name in config.tenants}


def actions(plan: ReloadPlan) -> dict[str, Action]:
    return {c.tenant: c.action for c in plan.changes}


def change_of(plan: ReloadPlan, name: str) -> TenantChange:
    return next(c for c in plan.changes if c.tenant == name)


@pytest.fixture
def old(tmp_path: Path) -> Config:
    return load(tmp_path, base_data(tmp_path))


# -- planning ----------------------------------------------------------------------------------


def test_case_c12_plan(tmp_path: Path, old: Config) -> None:
    built = built_by(old)
    data = base_data(tmp_path)
    data["tenants"]["dev"]["probe_period_s"] = 2
    (tmp_path / "prod.Modelfile").write_text("FROM janus-pro-7b\nPARAMETER num_ctx 4096\n")
    data["tenants"]["qa"] = tenant("qa")

    plan = plan_reload(old, load(tmp_path, data), built)

    assert actions(plan) == {
        "dev": Action.APPLY,
        "stage": Action.KEEP,
        "prod": Action.REBUILD,
        "qa": Action.START,
    }
    assert change_of(plan, "dev").reasons == ["probe_period_s 10.0 -> 2.0"]
    assert change_of(plan, "prod").variants == ["prod-v"]
    assert change_of(plan, "prod").reasons == ["variant prod-v changed (parameters)"]


def test_edited_modelfile_counts_even_with_an_identical_config_file(
    tmp_path: Path, old: Config
) -> None:
    built = built_by(old)
    data = base_data(tmp_path)
    (tmp_path / "prod.Modelfile").write_text("FROM janus-pro-7b\nSYSTEM be brief\n")

    plan = plan_reload(old, load(tmp_path, data), built)

    assert change_of(plan, "prod").action is Action.REBUILD


def test_removed_tenant_is_stopped(tmp_path: Path, old: Config) -> None:
    data = base_data(tmp_path)
    del data["tenants"]["stage"]

    plan = plan_reload(old, load(tmp_path, data), built_by(old))

    assert change_of(plan, "stage").action is Action.STOP
    assert "store and log files stay" in change_of(plan, "stage").reasons[0]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("env", {"OLLAMA_KEEP_ALIVE": "1m"}),
        ("nofile", 4096),
        ("models_dir", "stores/elsewhere"),
        ("home", "homes/dev"),
        ("port", 24000),
    ],
)
def test_launch_setting_restarts_only_that_tenant(
    tmp_path: Path, old: Config, key: str, value: Any
) -> None:
    data = base_data(tmp_path)
    data["tenants"]["dev"][key] = value

    plan = plan_reload(old, load(tmp_path, data), built_by(old))

    assert actions(plan) == {"dev": Action.RESTART, "stage": Action.KEEP, "prod": Action.KEEP}
    assert change_of(plan, "dev").reasons[0].startswith(key)


def test_new_binary_restarts_every_tenant(tmp_path: Path, old: Config) -> None:
    data = base_data(tmp_path)
    data["ollama"]["binary"] = "/bin/false"

    plan = plan_reload(old, load(tmp_path, data), built_by(old))

    assert set(actions(plan).values()) == {Action.RESTART}
    assert change_of(plan, "stage").reasons == ["ollama.binary '/bin/true' -> '/bin/false'"]


@pytest.mark.parametrize(
    ("key", "value"),
    [("probe_timeout_s", 1), ("backoff_max_s", 5), ("connect_wait_s", 3), ("stop_timeout_s", 2)],
)
def test_supervisor_knob_is_applied_in_place(
    tmp_path: Path, old: Config, key: str, value: Any
) -> None:
    data = base_data(tmp_path)
    data["tenants"]["stage"][key] = value

    plan = plan_reload(old, load(tmp_path, data), built_by(old))

    assert actions(plan)["stage"] is Action.APPLY


def test_log_settings_apply_to_every_tenant(tmp_path: Path, old: Config) -> None:
    data = base_data(tmp_path)
    data["log_max_bytes"] = 1048576

    plan = plan_reload(old, load(tmp_path, data), built_by(old))

    assert set(actions(plan).values()) == {Action.APPLY}
    assert change_of(plan, "dev").reasons == ["log_max_bytes 10485760 -> 1048576"]


def test_new_socket_path_rebinds_without_restart(tmp_path: Path, old: Config) -> None:
    data = base_data(tmp_path)
    data["tenants"]["dev"]["socket"] = "run/dev-new.sock"

    change = change_of(plan_reload(old, load(tmp_path, data), built_by(old)), "dev")

    assert (change.action, change.rebind) == (Action.KEEP, True)
    assert change.reasons[0].startswith("socket.path ")


def test_new_user_also_rebinds_a_socket_owned_by_default(tmp_path: Path, old: Config) -> None:
    data = base_data(tmp_path)
    data["tenants"]["dev"]["user"] = "janus_dev2"

    change = change_of(plan_reload(old, load(tmp_path, data), built_by(old)), "dev")

    assert (change.action, change.rebind) == (Action.RESTART, True)


def test_variant_left_out_is_kept_in_the_store(tmp_path: Path, old: Config) -> None:
    data = base_data(tmp_path)
    data["tenants"]["prod"]["variants"] = []

    change = change_of(plan_reload(old, load(tmp_path, data), built_by(old)), "prod")

    assert change.action is Action.APPLY
    assert "kept in the store" in change.reasons[0]


def test_unclassified_setting_restarts_to_be_safe(
    tmp_path: Path, old: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reload, "KNOB_FIELDS", reload.KNOB_FIELDS - {"probe_period_s"})
    data = base_data(tmp_path)
    data["tenants"]["dev"]["probe_period_s"] = 1

    change = change_of(plan_reload(old, load(tmp_path, data), built_by(old)), "dev")

    assert change.action is Action.RESTART
    assert "unclassified setting" in change.reasons[0]


def test_control_socket_change_is_a_note_for_a_daemon_restart(
    tmp_path: Path, old: Config
) -> None:
    data = base_data(tmp_path)
    data["control"]["socket"] = str(tmp_path / "run" / "other.sock")

    plan = plan_reload(old, load(tmp_path, data), built_by(old))

    assert set(actions(plan).values()) == {Action.KEEP}
    assert plan.notes == [
        ("control.socket changed: takes effect when the daemon restarts "
         "(systemctl restart janus-supervisord)")
    ]


def test_nothing_changed_keeps_everything(tmp_path: Path, old: Config) -> None:
    plan = plan_reload(old, load(tmp_path, base_data(tmp_path), "copy.yaml"), built_by(old))

    assert set(actions(plan).values()) == {Action.KEEP}
    assert plan.notes == []


# -- loading -----------------------------------------------------------------------------------


def test_invalid_file_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    data = base_data(tmp_path)
    data["tenants"]["dev"]["probe_period_s"] = -1
    data["tenants"]["stage"]["user"] = "root"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))

    with pytest.raises(ConfigError) as caught:
        load_new_config(path, as_root=True)

    shown = [str(p) for p in caught.value.problems]
    assert len(shown) == 2
    assert any("tenants.dev.probe_period_s: -1" in p and p.startswith(f"{path}:") for p in shown)
    assert any("tenants.stage.user: 'root'" in p for p in shown)


def test_machine_problems_make_the_file_invalid(tmp_path: Path) -> None:
    data = base_data(tmp_path)
    data["ollama"]["binary"] = str(tmp_path / "no-ollama")
    path = tmp_path / "janus.yaml"
    path.write_text(yaml.safe_dump(data))

    with pytest.raises(ConfigError, match="ollama.binary: .* is not an executable file"):
        load_new_config(path, as_root=True)


def test_daemon_without_a_file_cannot_reload() -> None:
    with pytest.raises(SupervisorError, match="not started from a config file"):
        load_new_config(None, as_root=True)


# -- applying ----------------------------------------------------------------------------------


class FakeTarget:
    """Records the order of calls; ``fail`` names tenants whose step raises."""

    def __init__(self, fail: set[str] | None = None, failed: set[str] | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail or set()
        self.failed_tenants = failed or set()  # tenants in state failed

    async def _step(self, what: str, name: str) -> str:
        self.calls.append(f"{what} {name}")
        if name in self.fail:
            raise SpawnError(f"tenant {name}: {what} failed: user missing")
        await anyio.lowlevel.checkpoint()
        return f"{what} done"

    async def remove_tenant(self, name: str) -> str:
        return await self._step("remove", name)

    async def add_tenant(self, name: str) -> str:
        return await self._step("add", name)

    async def relaunch_tenant(self, name: str) -> str:
        return await self._step("relaunch", name)

    async def rebuild_variants(self, name: str, variants: list[str]) -> str:
        return await self._step(f"rebuild {','.join(variants)} of", name)

    async def rebind_tenant(self, name: str) -> str:
        return await self._step("rebind", name)

    async def revive_tenant(self, name: str) -> str | None:
        if name not in self.failed_tenants:
            return None
        return await self._step("revive", name)

    def take_config(self, config: Config) -> None:
        self.calls.append("take_config")


def sample_plan() -> ReloadPlan:
    return ReloadPlan(
        source="janus.yaml",
        dry_run=False,
        changes=[
            TenantChange(tenant="qa", action=Action.START),
            TenantChange(tenant="dev", action=Action.APPLY, rebind=True),
            TenantChange(tenant="prod", action=Action.REBUILD, variants=["prod-v"]),
            TenantChange(tenant="old", action=Action.STOP),
            TenantChange(tenant="stage", action=Action.KEEP),
            TenantChange(tenant="edge", action=Action.RESTART),
        ],
    )


async def test_apply_removes_first_then_takes_the_config_then_the_rest(old: Config) -> None:
    target = FakeTarget()

    plan = await apply_plan(target, sample_plan(), old)

    assert target.calls[:2] == ["remove old", "take_config"]
    assert sorted(target.calls[2:]) == [
        "add qa", "rebind dev", "rebuild prod-v of prod", "relaunch edge"]
    assert plan.applied and plan.ok
    assert {c.tenant: c.result for c in plan.changes}["stage"] == "untouched"


async def test_a_failed_step_is_reported_and_the_others_still_happen(old: Config) -> None:
    target = FakeTarget(fail={"qa"})

    plan = await apply_plan(target, sample_plan(), old)

    failed = change_of(plan, "qa")
    assert not plan.ok
    assert (failed.ok, failed.result) == (False, "tenant qa: add failed: user missing")
    assert "relaunch edge" in target.calls
    assert all(c.ok for c in plan.changes if c.tenant != "qa")


async def test_a_changed_failed_tenant_is_started_again_an_unchanged_one_not(
    old: Config,
) -> None:
    target = FakeTarget(failed={"dev", "stage", "prod"})

    plan = await apply_plan(target, sample_plan(), old)

    assert "revive dev" in target.calls and "revive prod" in target.calls
    assert "revive stage" not in target.calls  # keep: untouched, stays failed
    assert change_of(plan, "dev").result == "rebind done; applied in place; revive done"


def test_plan_is_json_with_the_cli_words(old: Config) -> None:
    plan = copy.deepcopy(sample_plan())

    doc = plan.model_dump(mode="json")

    assert [c["action"] for c in doc["changes"]] == [
        "start", "apply", "rebuild", "stop", "keep", "restart"]
