"""Hydra composition of each command's config: `robodiff/conf/<command>.yaml` plus overrides.

The composed config is in struct mode, so an unknown key is an error that names it; typed schemas
(dataclasses) are merged in with `validate` so that a wrong type also names its key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from robodiff.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent / "conf"


def _override_key(message: str) -> str | None:
    for pattern in (r"Could not override '([^']+)'", r"Key '([^']+)' is not in struct",
                    r"Could not load '([^']+)'", r"key '([^']+)'"):
        m = re.search(pattern, message)
        if m:
            return m.group(1)
    return None


def compose(command: str, overrides: list[str]) -> DictConfig:
    """Compose `conf/<command>.yaml` with Hydra-style `key=value` overrides."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=command, overrides=list(overrides))
    except Exception as exc:  # hydra wraps every composition error; keep the first line
        text = str(exc)
        key = _override_key(text)
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        if key and ("not in struct" in text or "Could not override" in text):
            raise ConfigError(f"unknown config key '{key}' for `robodiff {command}`") from None
        if "Could not find" in text or "Could not load" in text:
            raise ConfigError(first) from None
        raise ConfigError(f"bad override ({first})") from None
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.set_struct(cfg, True)
    return cfg


def validate(cfg: DictConfig, schema: type, where: str = "") -> DictConfig:
    """Merge `cfg` into a dataclass schema: unknown keys and wrong types name the key."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or _override_key(str(exc)) or "?"
        prefix = f"{where}." if where and not str(key).startswith(where) else ""
        msg = str(exc).strip().splitlines()[0]
        raise ConfigError(f"config key '{prefix}{key}': {msg}") from None
    OmegaConf.set_struct(merged, True)
    return merged


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def require(cfg: DictConfig, key: str, command: str) -> Any:
    value = OmegaConf.select(cfg, key)
    if value is None or value == "":
        raise ConfigError(f"`{key}=` is required")
    return value
