"""README.md stays true: every config key and every exit code is documented."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from supervisor import config, exitcodes

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items() if name != "source"]


def test_every_config_key_is_in_the_reference() -> None:
    models = [config.Config, config.ControlConfig, config.OllamaConfig, config.BaseModelConfig,
              config.TenantConfig, config.SocketConfig, config.VariantConfig]

    missing = [f"{m.__name__}.{k}" for m in models for k in keys(m)
               if not re.search(rf"[`.]{re.escape(k)}[`.\[]", README)]

    assert missing == []


def test_every_exit_code_is_in_the_table() -> None:
    codes = {v for k, v in vars(exitcodes).items() if k.isupper()}

    documented = {int(m) for m in re.findall(r"^\| (\d) \|", README, flags=re.MULTILINE)}

    assert codes <= documented


def test_quick_start_is_two_commands() -> None:
    block = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]

    commands = [line for line in block.strip().splitlines() if line.strip()]

    assert [c.split()[0] for c in commands] == ["tools/demo", "tools/test"]
