"""Setting up an arm before its first calibration: which port is it (`find_port`), and giving each
new servo its id and baud rate, one servo at a time (`setup_motors`): new servos all answer at
id 1, so they can only be told apart alone on the bus."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from robodiff.errors import UserError
from robodiff.hal.hardware import HardwareSpec, motors_of
from robodiff.hal.motors import BUSES
from robodiff.hal.motors.bus import Motor, MotorBus, open_serial
from robodiff.hal.robots.arm_bus import BusSettings

OpenPort = Callable[[str, int, float], Any]


def list_serial_ports() -> list[str]:
    """The serial ports the system has now (pyserial's listing)."""
    try:
        list_ports = importlib.import_module("serial.tools.list_ports")
    except ImportError:
        raise UserError("finding the port needs pyserial (`pip install pyserial`, or robodiff[hardware])") from None
    return sorted(port.device for port in list_ports.comports())


def find_port(list_ports: Callable[[], list[str]], wait: Callable[[str], None]) -> str:
    """The port that disappears while the arm's USB cable is out."""
    before = set(list_ports())
    if not before:
        raise UserError("no serial ports at all: plug the arm's USB adapter in (and power it), then try again")
    wait(f"Ports now: {', '.join(sorted(before))}. Unplug the arm's USB cable, then press Enter.")
    gone = sorted(before - set(list_ports()))
    if len(gone) != 1:
        what = "no port disappeared" if not gone else f"{len(gone)} ports disappeared ({', '.join(gone)})"
        raise UserError(f"{what}: unplug exactly the arm's USB cable and try again")
    return gone[0]


def _bus(bus_class: type[MotorBus], settings: BusSettings, motors: dict[str, Motor], baudrate: int,
         open_port: OpenPort) -> MotorBus:
    bus = bus_class(settings.port, motors, baudrate=baudrate, timeout_s=settings.timeout_s,
                    retries=settings.retries, silent_reads=settings.silent_reads, open_port=open_port)
    bus.connect()
    return bus


def _alone(bus_class: type[MotorBus], settings: BusSettings, name: str, open_port: OpenPort) -> tuple[int, int]:
    """(id, baud rate) of the one servo on the bus, tried at every baud rate the family has."""
    rates = [settings.baudrate] + [b for b in bus_class.BAUD_RATES.values() if b != settings.baudrate]
    for baudrate in rates:
        bus = _bus(bus_class, settings, {}, baudrate, open_port)
        try:
            found = bus.broadcast_ping()
        finally:
            bus.disconnect()
        if len(found) > 1:
            raise UserError(f"{settings.port}: {len(found)} servos answer (ids {', '.join(map(str, found))}): "
                            f"connect only the '{name}' servo")
        if found:
            return found[0], baudrate
    raise UserError(f"{settings.port}: no servo answers at any baud rate: is the '{name}' servo connected "
                    f"and the bus powered?")


def setup_motors(hardware: HardwareSpec, settings: BusSettings, wait: Callable[[str], None],
                 say: Callable[[str], None], open_port: OpenPort = open_serial) -> dict[str, int]:
    """Give every servo of the arm its id and the bus's baud rate, gripper first (the order the
    cables are chained back from the adapter)."""
    bus_class = BUSES[settings.protocol]
    code = {rate: c for c, rate in bus_class.BAUD_RATES.items()}
    if settings.baudrate not in code:
        raise UserError(f"{hardware.path}: baud rate {settings.baudrate} is not one the servos can be set to "
                        f"({', '.join(map(str, code))})")
    done: dict[str, int] = {}
    for name, motor in reversed(list(motors_of(hardware).items())):
        wait(f"Connect only the '{name}' servo to the bus (it gets id {motor.id}), then press Enter.")
        found, baudrate = _alone(bus_class, settings, name, open_port)
        bus = _bus(bus_class, settings, {name: Motor(found, motor.model)}, baudrate, open_port)
        try:
            number = bus.read_one("Model_Number", name)
            table = bus_class.TABLES[motor.model]
            if number != table.model_number:
                raise UserError(f"the '{name}' servo is model number {number}, not the {table.model} "
                                f"({table.model_number}) the arm has")
            bus.write_acked("ID", {name: motor.id})  # acknowledged from the id it had
        finally:
            bus.disconnect()
        bus = _bus(bus_class, settings, {name: motor}, baudrate, open_port)
        try:
            bus.write_acked("Baud_Rate", {name: code[settings.baudrate]})
        finally:
            bus.disconnect()
        say(f"'{name}': id {motor.id} (was {found}), {settings.baudrate} baud")
        done[name] = motor.id
    return done
