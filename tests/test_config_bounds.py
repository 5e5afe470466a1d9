"""Every numeric key of every command, listed from the commands' schemas, given 0, a negative number
and a non-number: the command's config loading (no run) names the key wherever the value is not
meaningful, and accepts it where it is."""

from __future__ import annotations

import dataclasses
import importlib
import re
import typing
from typing import Any

import pytest
from omegaconf import OmegaConf

from robodiff.cli import COMMANDS
from robodiff.commands.bench import BENCHES
from robodiff.commands.hardware import SUBCOMMANDS as HARDWARE, module as hardware_module
from robodiff.errors import ConfigError
from robodiff.policy.schema import SCHEMAS as POLICY_SCHEMAS

NUMBERS = (int, float)


def command_modules() -> dict[str, Any]:
    """`robodiff <command>` -> the module holding its SCHEMA and load_config (bench: per bench)."""
    out = {}
    for command in COMMANDS:
        if command == "bench":
            for bench in BENCHES:
                out[f"bench {bench}"] = importlib.import_module(f"robodiff.bench.{bench}")
        elif command == "hardware":
            for sub in HARDWARE:
                out[f"hardware {sub}"] = hardware_module(sub)
        elif command != "dataset":  # its only number (episode=K) is parsed and checked by hand
            out[command] = importlib.import_module(f"robodiff.commands.{command}")
    return out


def _numeric(hint: Any) -> bool:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint in NUMBERS:
        return True
    if typing.get_origin(hint) is typing.Union:
        return any(_numeric(a) for a in args)
    if typing.get_origin(hint) is list:
        return bool(args) and args[0] in NUMBERS
    return False


def numeric_fields(schema: type, prefix: str = "") -> list[tuple[str, Any, dict | None, bool]]:
    """(dotted key, type, bounds or None, declared) of every field holding numbers."""
    hints = typing.get_type_hints(schema)
    out = []
    for f in dataclasses.fields(schema):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out += numeric_fields(hint, f"{prefix}{f.name}.")
        elif _numeric(hint) or "bounds" in f.metadata:
            out.append((f"{prefix}{f.name}", hint, f.metadata.get("bounds"), "bounds" in f.metadata))
    return out


def cases() -> list[tuple[str, list[str], str, Any, dict | None, bool]]:
    out = []
    for name, module in command_modules().items():
        for key, hint, bounds, declared in numeric_fields(module.SCHEMA):
            out.append((name, [], key, hint, bounds, declared))
        if name == "train":  # the policy group: each policy's own schema
            for policy, schema in POLICY_SCHEMAS.items():
                for key, hint, bounds, declared in numeric_fields(schema, "policy."):
                    out.append((name, [f"policy={policy}"], key, hint, bounds, declared))
    return out


CASES = cases()


def test_every_command_has_a_schema_and_numbers_to_check():
    assert {c[0] for c in CASES} >= {"collect", "train", "eval", "deploy", "quickstart", "bench data",
                                      "bench train", "bench inference", "bench sim", "bench latency",
                                      "hardware emulate", "hardware calibrate"}
    assert len(CASES) > 100


@pytest.mark.parametrize("command, extra, key, hint, bounds, declared", CASES,
                         ids=[f"{c[0]}:{c[1][0] + ':' if c[1] else ''}{c[2]}" for c in CASES])
def test_numeric_key(command, extra, key, hint, bounds, declared):
    assert declared, f"{command} {key}: a number without a declared range (config.bounded / unbounded)"
    module = command_modules()[command]
    default = OmegaConf.select(module.load_config(extra), key)
    is_list = any(typing.get_origin(h) is list for h in (hint, *typing.get_args(hint)))
    for value in ("0", "-1", "abc"):
        if is_list:
            length = len(default) if default is not None else 2
            text = "[" + ",".join([value] * length) + "]"
        else:
            text = value
        # A non-number never means anything here; a number does unless its range excludes it.
        meaningful = value != "abc" and (bounds is None or _within(float(value), bounds))
        if meaningful:
            module.load_config([*extra, f"{key}={text}"])
        else:
            with pytest.raises(ConfigError, match="'" + re.escape(key) + r"(\[\d+\])?'"):
                module.load_config([*extra, f"{key}={text}"])


def _within(x: float, bounds: dict) -> bool:
    return ((bounds["gt"] is None or x > bounds["gt"]) and (bounds["ge"] is None or x >= bounds["ge"])
            and (bounds["lt"] is None or x < bounds["lt"]) and (bounds["le"] is None or x <= bounds["le"]))


@pytest.mark.parametrize("argv, words", [
    (["deploy", "duration_s=0"], "'duration_s' must be > 0"),
    (["deploy", "duration_s=-1"], "'duration_s' must be > 0"),
    (["deploy", "fps=0"], "'fps' must be > 0"),
    (["deploy", "inference_delay_s=-1"], "'inference_delay_s' must be >= 0"),
    (["train", "training.steps=0"], "'training.steps' must be >= 1"),
    (["eval", "episodes=0"], "'episodes' must be >= 1"),
    (["collect", "seed=-1"], "'seed' must be >= 0"),
    (["bench", "sim", "steps=abc"], "'steps'"),
])
def test_cli_names_the_key_in_one_line(argv, words, capsys):
    from robodiff.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
