"""`robodiff hardware find-port`: the port that disappears while the arm's USB cable is out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from robodiff.commands.hardware import say, wait_for_enter
from robodiff.config import compose, validate
from robodiff.hal.robots.setup import find_port, list_serial_ports


@dataclass
class FindPortConfig:
    pass


SCHEMA = FindPortConfig


def load_config(overrides: list[str]) -> Any:
    return validate(compose("hardware_find_port", overrides), FindPortConfig)


def run(overrides: list[str], flags: set[str]) -> dict:
    load_config(overrides)
    port = find_port(list_serial_ports, wait_for_enter)
    say(f"The arm is on {port}: plug it back in, and pass robot.port={port} (a follower) or "
        f"robot.leader.port={port} (a leader), or write it in your hardware YAML.")
    return {"port": port}
