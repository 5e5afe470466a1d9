"""Hydra composition of each command's config: `robodiff/conf/<command>.yaml` plus overrides.

The composed config is in struct mode, so an unknown key is an error that names it; typed schemas
(dataclasses) are merged in with `validate` so that a wrong type also names its key, and so does a
number outside the range its field declares (`bounded`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
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


def settings_overrides(overrides: list[str], key: str) -> list[str]:
    """`robot=so101 robot.port=/dev/ttyACM1`: a key that names something (a robot) and settings of
    that thing under the same name. Hydra cannot hold both in one key, so the settings go to
    `<key>_settings` (a mapping the command's config declares), where any key may be added."""
    prefix = f"{key}."
    return [f"+{key}_settings.{o[len(prefix):]}" if o.startswith(prefix) else o for o in overrides]


def compose(command: str, overrides: list[str], settings_of: tuple[str, ...] = ()) -> DictConfig:
    """Compose `conf/<command>.yaml` with Hydra-style `key=value` overrides; `settings_of` names
    the keys whose dotted overrides are settings (`settings_overrides`). `key=` with nothing after
    it unsets the key (null), as a user writing it means, rather than Hydra's empty string (which a
    path would turn into the current directory)."""
    overrides = [f"{item}null" if item.endswith("=") and item.count("=") == 1 else item for item in overrides]
    for key in settings_of:
        overrides = settings_overrides(overrides, key)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=command, overrides=list(overrides))
    except Exception as exc:  # hydra wraps every composition error; keep the first line
        text = str(exc)
        key = _override_key(text)
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        if key and ("not in struct" in text or "Could not override" in text):
            raise ConfigError(f"unknown config key '{key}' for `robodiff {command.replace('_', ' ')}`") from None
        group = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
        if group:
            options = sorted(p.stem for p in (CONF_DIR / group.group(1)).glob("*.yaml"))
            raise ConfigError(f"{group.group(1)}={group.group(2)}: no such {group.group(1)} "
                              f"(one of {', '.join(options)})") from None
        if "Could not find" in text or "Could not load" in text:
            raise ConfigError(first) from None
        hint = ("; quote a value with special characters, e.g. 'out=\"run (1).zarr\"'"
                if "mismatched input" in text or "LexerNoViableAlt" in text or "token recognition" in text else "")
        raise ConfigError(f"bad override ({first}){hint}") from None
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.set_struct(cfg, True)
    return cfg


def bounded(default: Any = MISSING, *, gt: float | None = None, ge: float | None = None,
            lt: float | None = None, le: float | None = None, factory: Any = None) -> Any:
    """A schema field holding a number (or a list of numbers, each checked) that must lie in the
    given range; `validate` names the key of a value outside it. None (where the field allows it)
    is never out of range."""
    metadata = {"bounds": {"gt": gt, "ge": ge, "lt": lt, "le": le}}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def unbounded(default: Any = MISSING, factory: Any = None) -> Any:
    """A numeric schema field where any value means something (a seed offset, a coordinate)."""
    metadata = {"bounds": None}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def range_text(bounds: dict[str, float | None]) -> str:
    words = {"gt": "> {}", "ge": ">= {}", "lt": "< {}", "le": "<= {}"}
    return " and ".join(words[k].format(v) for k, v in bounds.items() if v is not None)


def _in_range(value: Any, bounds: dict[str, float | None]) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    checks = {"gt": value.__gt__, "ge": value.__ge__, "lt": value.__lt__, "le": value.__le__}
    return all(checks[k](v) for k, v in bounds.items() if v is not None)


def check_bounds(cfg: DictConfig, schema: type, prefix: str = "") -> None:
    """Every `bounded` field of `schema` (nested dataclasses too) within its range."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        value = cfg.get(f.name) if f.name in cfg else None
        # A nested schema, or an optional one (checked when present).
        nested = [h for h in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(h)]
        if nested:
            if value is not None:
                check_bounds(value, nested[0], f"{key}.")
            continue
        bounds = f.metadata.get("bounds")
        if not bounds or value is None:
            continue
        values = list(value) if isinstance(value, ListConfig) else [value]
        bad = [v for v in values if v is not None and not _in_range(v, bounds)]
        if bad:
            raise ConfigError(f"config key '{key}' must be {range_text(bounds)}, got {bad[0]!r}")


def validate(cfg: DictConfig, schema: type, where: str = "") -> DictConfig:
    """Merge `cfg` into a dataclass schema: unknown keys, wrong types and numbers outside their
    declared range name the key."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or _override_key(str(exc)) or "?"
        prefix = f"{where}." if where and not str(key).startswith(where) else ""
        msg = str(exc).strip().splitlines()[0]
        raise ConfigError(f"config key '{prefix}{key}': {msg}") from None
    OmegaConf.set_struct(merged, True)
    check_bounds(merged, schema, f"{where}." if where else "")
    return merged


def split_policy_override(overrides: list[str]) -> tuple[list[str], str | None]:
    """`policy=` as a plain key (eval's expert|random, quickstart's policy name): conf/policy/
    would make Hydra read it as a config group. Returns the other overrides and its value."""
    rest, policy = [], None
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "policy":
            policy = value or None
        else:
            rest.append(item)
    return rest, policy


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def require(cfg: DictConfig, key: str, command: str) -> Any:
    value = OmegaConf.select(cfg, key)
    if value is None or value == "":
        raise ConfigError(f"`{key}=` is required")
    return value
