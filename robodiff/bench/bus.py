"""Servo bus speed and faults: unpaced cycles of a sync read of every servo's position and a sync
write of every goal, through the real driver (`FeetechBus` with the hardware YAML's timeout and
retries), against the bus emulator (each in its own `robodiff hardware emulate` process) or a
port you name.

Modes (without `link=`, each against a fresh emulator):
- `clean`: cycles per second;
- `corrupt`: the same with `corrupt_rate` of the status packets damaged: cycles per second, the
  damaged packets the emulator sent against those the driver refused, and the stale reads counted
  (a value that stayed damaged after the retries: never returned as fresh);
- `vanish`: the port disappears `fault_after_s` into the run: how long until the driver's one error;
- `silent`: one servo stops answering: how long until the error naming it, and whether anything
  was sent after it.
With `link=PATH` (an emulator you started, or a real arm): the `clean` figures of that port.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import MISSING

from robodiff.bench import machine
from robodiff.config import bounded, compose, to_dict, validate
from robodiff.errors import UserError
from robodiff.hal.hardware import HardwareSpec, load_hardware
from robodiff.hal.motors import BusError, MotorBus
from robodiff.hal.robots.arm_bus import BusSettings, make_bus


@dataclass
class BenchBusConfig:
    robot: str = MISSING
    link: Optional[str] = MISSING
    cycles: int = bounded(ge=1)
    corrupt_rate: float = bounded(gt=0, le=1)
    fault_after_s: float = bounded(gt=0)
    silent: str = MISSING
    robot_settings: Dict[str, Any] = field(default_factory=dict)


SCHEMA = BenchBusConfig


def load_config(overrides: list[str]) -> Any:
    return validate(compose("bench_bus", overrides, settings_of=("robot",)), BenchBusConfig)


class EmulatorProcess:
    """`robodiff hardware emulate` in a child process; `stats()` after `stop()` is its JSON report."""

    def __init__(self, link: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "robodiff", "hardware", "emulate", f"link={link}",
                                      *args, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        if "Ctrl-C stops" not in line:
            self.proc.kill()
            raise UserError(f"the bus emulator did not start: {line.strip() or self.proc.stderr.read().strip()}")
        self._stats: dict[str, Any] = {}

    def stop(self, terminate: bool = True) -> dict[str, Any]:
        """`terminate=False`: the emulator ends by itself (a scheduled disconnect); a SIGTERM racing
        its wrap-up would cut its report short."""
        if terminate and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise UserError(f"the bus emulator did not stop within 30 s{' of SIGTERM' if terminate else ''} "
                            "(killed)") from None
        lines = out.strip().splitlines()
        return json.loads(lines[-1]) if lines else {}


def cycles(bus: MotorBus, n: int, until_error: bool = False) -> tuple[int, float, BusError | None, float]:
    """`n` read+write cycles (or until a bus error when `until_error`): (cycles, seconds, the
    error, when it was raised)."""
    start = time.monotonic()
    done = 0
    try:
        while done < n:
            bus.write("Goal_Position", bus.read("Present_Position"))
            done += 1
    except BusError as error:
        if not until_error:
            raise
        return done, time.monotonic() - start, error, time.monotonic()
    return done, time.monotonic() - start, None, time.monotonic()


def measure(hardware: HardwareSpec, settings: BusSettings, n: int) -> dict[str, Any]:
    bus = make_bus(hardware, settings)
    bus.connect()
    try:
        done, seconds, _, _ = cycles(bus, n)
        return {"cycles_hz": round(done / seconds, 1), **bus.stats()}
    finally:
        bus.disconnect()


def run(overrides: list[str], flags: set[str]) -> dict:
    cfg = load_config(overrides)
    hardware = load_hardware(cfg.robot, to_dict(cfg.robot_settings))
    settings = BusSettings.of(hardware, "follower")
    result: dict[str, Any] = {"bench": "bus", "robot": hardware.name, "servos": len(hardware.joints),
                              "timeout_ms": settings.timeout_s * 1e3, "retries": settings.retries,
                              "machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime())}
    if cfg.link is not None:
        figures = measure(hardware, BusSettings(**{**vars(settings), "port": str(cfg.link)}), cfg.cycles)
        result.update({f"clean_{k}": v for k, v in figures.items()})
        print(f"{cfg.link}: {figures['cycles_hz']} read+write cycles/s of {len(hardware.joints)} servos")
        return result
    robot_arg = f"robot={cfg.robot}"
    with tempfile.TemporaryDirectory(prefix="robodiff-bench-bus-") as tmp:
        here = BusSettings(**{**vars(settings), "port": str(Path(tmp) / "arm")})
        for mode, args in (("clean", []), ("corrupt", [f"corrupt_rate={cfg.corrupt_rate}"])):
            emulator = EmulatorProcess(Path(here.port), robot_arg, *args)
            try:
                figures = measure(hardware, here, cfg.cycles)
            finally:
                sent = emulator.stop()
            result.update({f"{mode}_{k}": v for k, v in figures.items()})
            result[f"{mode}_damaged_packets_sent"] = sent.get("corrupted", 0)
            print(f"{mode}: {figures['cycles_hz']} cycles/s, {figures['bus_retries']} retries, "
                  f"{figures['bus_bad_status_packets']} packets refused of {sent.get('corrupted', 0)} damaged, "
                  f"{figures['bus_stale_reads']} stale reads counted")
        for mode, args in (("vanish", [f"disconnect_after_s={cfg.fault_after_s}"]),
                           ("silent", [f"silent={cfg.silent}", f"silent_after_s={cfg.fault_after_s}"])):
            emulator = EmulatorProcess(Path(here.port), robot_arg, *args)
            bus = make_bus(hardware, here)
            try:
                bus.connect()
                _, _, error, raised_at = cycles(bus, 10**9, until_error=True)
                try:  # nothing more goes out after the error, whatever is asked
                    bus.write("Goal_Position", bus.read("Present_Position"))
                except BusError:
                    pass
            finally:
                bus.disconnect()
                sent = emulator.stop(terminate=mode != "vanish")
            fault_t = sent["vanished_t"] if mode == "vanish" else sent["started_t"] + cfg.fault_after_s
            result[f"{mode}_detect_ms"] = round((raised_at - fault_t) * 1e3, 1)
            result[f"{mode}_error"] = str(error)
            result[f"{mode}_sent_after_error"] = (sent.get("last_instruction_t") or 0) > raised_at
            print(f"{mode}: detected {result[f'{mode}_detect_ms']} ms after the fault: {error}")
    return result
