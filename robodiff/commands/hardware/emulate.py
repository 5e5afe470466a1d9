"""`robodiff hardware emulate robot=R link=PATH [arm=follower|leader] ...`: a servo bus over a pty."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
from omegaconf import MISSING

from robodiff.commands.hardware import say
from robodiff.config import bounded, compose, require, to_dict, validate
from robodiff.data.store import EpisodeStore
from robodiff.errors import UserError
from robodiff.hal.emulator import BusEmulator, CalibrationPerson, EmulatedArm, Person, RecordedPerson, TeleopPerson
from robodiff.hal.hardware import HardwareSpec, load_hardware

PERSONS = ("none", "calibration", "teleop", "recorded")


@dataclass
class ArmDefaults:
    person: str = MISSING
    voltage: float = bounded(gt=0)
    assembly_seed: int = bounded(ge=0)


@dataclass
class Arms:
    follower: ArmDefaults = field(default_factory=ArmDefaults)
    leader: ArmDefaults = field(default_factory=ArmDefaults)


@dataclass
class EmulateConfig:
    robot: str = MISSING
    link: Optional[str] = MISSING
    arm: str = MISSING
    person: Optional[str] = MISSING
    trajectory: Optional[str] = MISSING
    episode: int = bounded(ge=0)
    speed_deg_s: float = bounded(gt=0)
    hold_s: float = bounded(gt=0)
    sweep_s: float = bounded(gt=0)
    voltage: Optional[float] = bounded(gt=0)
    assembly_seed: Optional[int] = bounded(ge=0)
    corrupt_rate: float = bounded(ge=0, le=1)
    drop_rate: float = bounded(ge=0, le=1)
    disconnect_after_s: Optional[float] = bounded(gt=0)
    silent: Optional[str] = MISSING
    silent_after_s: float = bounded(ge=0)
    seed: int = bounded(ge=0)
    arms: Arms = field(default_factory=Arms)
    robot_settings: Dict[str, Any] = field(default_factory=dict)


SCHEMA = EmulateConfig


def load_config(overrides: list[str]) -> Any:
    return validate(compose("hardware_emulate", overrides, settings_of=("robot",)), EmulateConfig)


def recorded(path: str, episode: int, hardware: HardwareSpec) -> RecordedPerson:
    """The joint positions of an episode store's `state` (in the units its features declare)."""
    with EpisodeStore.open(path) as store:
        feature = store.features.get("state")
        if feature is None or feature.units is None:
            raise UserError(f"trajectory={path}: needs a 'state' feature with units (degrees or range100)")
        data = store.read_episode(episode, ["state", "timestamp"])
    radians = hardware.with_units(feature.units).units.to_radians(data["state"])
    return RecordedPerson(data["timestamp"], radians)


def make_person(name: str, cfg: Any, arm: EmulatedArm) -> Person | None:
    if name not in PERSONS:
        raise UserError(f"person={name}: one of {', '.join(PERSONS)}")
    if name == "calibration":
        return CalibrationPerson(arm.low, arm.high, hold_s=cfg.hold_s, sweep_s=cfg.sweep_s)
    if name == "teleop":
        return TeleopPerson(arm.low, arm.high, speed_deg_s=cfg.speed_deg_s, seed=cfg.seed)
    if name == "recorded":
        if cfg.trajectory is None:
            raise UserError("person=recorded replays trajectory=STORE: set it")
        return recorded(cfg.trajectory, cfg.episode, arm.hardware)
    return None


def run(overrides: list[str], flags: set[str]) -> dict:
    cfg = load_config(overrides)
    link = Path(require(cfg, "link", "hardware emulate"))
    if cfg.arm not in ("follower", "leader"):
        raise UserError(f"arm={cfg.arm}: follower or leader")
    defaults = cfg.arms[cfg.arm]
    hardware = load_hardware(cfg.robot, to_dict(cfg.robot_settings))
    voltage = defaults.voltage if cfg.voltage is None else cfg.voltage
    seed = defaults.assembly_seed if cfg.assembly_seed is None else cfg.assembly_seed
    arm = EmulatedArm(hardware, voltage_v=float(voltage), assembly_seed=int(seed))
    person = cfg.person or ("recorded" if cfg.trajectory else defaults.person)
    try:
        arm.person = make_person(person, cfg, arm)
        arm.on_person_done = lambda: say(f"the scripted person ({person}) has finished")
        emulator = BusEmulator(arm, link, corrupt_rate=cfg.corrupt_rate, drop_rate=cfg.drop_rate,
                               disconnect_after_s=cfg.disconnect_after_s, silent=cfg.silent,
                               silent_after_s=cfg.silent_after_s, seed=cfg.seed)
        pts = emulator.open()
    except BaseException:
        arm.close()
        raise
    previous = {sig: signal.signal(sig, lambda *_: emulator.stop()) for sig in (signal.SIGINT, signal.SIGTERM)}
    say(f"emulating the {hardware.name} {cfg.arm} ({len(arm.servos)} servos, {voltage:g} V, person: {person}) "
        f"at {link} -> {pts}; Ctrl-C stops")
    try:
        try:
            emulator.serve()
        finally:
            emulator.close()
        if emulator.stats["vanished_t"] is not None:
            say(f"{link}: the port vanished after {cfg.disconnect_after_s:g} s, as asked")
        return {"link": str(link), "arm": cfg.arm, "person": person,
                **{k: (float(v) if isinstance(v, np.floating) else v) for k, v in emulator.stats.items()}}
    finally:
        # Only now: a Ctrl-C during the wrap-up after the serving ended is a stop already done,
        # not an interruption of the report.
        for sig, handler in previous.items():
            signal.signal(sig, handler)
