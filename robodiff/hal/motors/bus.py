"""`MotorBus`: servos on a serial bus, registers by name, every read bounded in time and checked.

The transaction logic lives here, once for every servo family: an instruction out, the status
packets owed back read against a timeout, the intact ones kept, the rest asked again a bounded
number of times. A servo family (Feetech STS/SCS here; Dynamixel protocol 2.0 is the next) only
says how its packets are built and parsed (`_*_packet`, `_parse`) and which control tables its
models have.

What can go wrong on a real SO arm, and what the bus does:
- a corrupt or missing status packet (noise, a stiff servo busy): the read is retried for the
  servos whose answer was not intact; after `retries` the value is the last one read, counted
  in `stats()["bus_stale_reads"]` (never silently stale);
- a servo that stays silent for `silent_reads` reads in a row: `ServoSilentError` naming it;
- the port vanishes (unplugged, power lost): `PortVanishedError`;
- a servo reports overload, overheating or a failed angle sensor: `ServoFaultError` naming it.
After any of these the bus is faulted: every later call raises the same error without sending
anything, so the servos keep the last goal they were given (torque stays on; the arm holds).
"""

from __future__ import annotations

import abc
import errno
import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from robodiff.errors import UserError
from robodiff.hal.motors.registers import Register, RegisterTable


class BusError(UserError):
    """A fault of the bus or of a servo on it (one line for the user)."""


class PortVanishedError(BusError):
    pass


class ServoSilentError(BusError):
    pass


class ServoFaultError(BusError):
    pass


@dataclass(frozen=True)
class Packet:
    """One parsed packet: an instruction (`code` = the instruction) or a status (`code` = the
    error byte); `size` = its bytes on the wire."""

    id: int
    code: int
    params: bytes
    size: int


@dataclass(frozen=True)
class Motor:
    id: int
    model: str


def open_serial(port: str, baudrate: int, timeout_s: float) -> Any:
    """The port through pyserial (a hardware extra, imported when a bus connects); the reasons a
    user meets most often, in one line each."""
    try:
        serial = importlib.import_module("serial")
    except ImportError:
        raise UserError("the servo bus needs pyserial (`pip install pyserial`, or robodiff[hardware])") from None
    try:
        # Reads time out; writes do not: pyserial raises "Write timeout" after a write that went
        # out whole when the process was scheduled out for longer than the timeout meanwhile, and
        # a few bytes to a serial adapter never wait (a vanished one fails at once instead).
        return serial.Serial(port, baudrate, timeout=timeout_s, exclusive=True)
    except (serial.SerialException, OSError) as exc:
        code = getattr(exc, "errno", None)
        if code == errno.EACCES:
            raise UserError(f"{port}: permission denied; on Linux add yourself to the dialout group "
                            f"(`sudo usermod -aG dialout $USER`, then log in again)") from None
        if code == errno.ENOENT:
            raise UserError(f"{port}: no such port (is the arm plugged in and powered? "
                            f"`robodiff hardware find-port` finds it)") from None
        if code in (errno.EAGAIN, errno.EBUSY) or "lock" in str(exc).lower():
            raise UserError(f"{port}: busy, another program has it open") from None
        raise UserError(f"{port}: cannot open the port ({exc})") from None


class MotorBus(abc.ABC):
    """`connect()`, then `read(register)`, `write(register, values)`, `torque(enabled)`;
    `disconnect()`. Values are the servos' raw integers, by motor name."""

    BROADCAST: int
    TABLES: dict[str, RegisterTable]
    BAUD_RATES: dict[int, int]  # Baud_Rate register value -> bits/s

    def __init__(self, port: str, motors: dict[str, Motor], *, baudrate: int, timeout_s: float,
                 retries: int, silent_reads: int,
                 open_port: Callable[[str, int, float], Any] = open_serial) -> None:
        for name, motor in motors.items():
            if motor.model not in self.TABLES:
                raise UserError(f"motor '{name}': unknown servo model '{motor.model}' "
                                f"(known: {', '.join(self.TABLES)})")
        self.port_name = port
        self.motors = dict(motors)
        self.baudrate = int(baudrate)
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.silent_reads = int(silent_reads)
        self._open_port = open_port
        self._port: Any = None
        self._lock = threading.RLock()
        self._fault: BusError | None = None
        self._last: dict[tuple[str, str], int] = {}
        self._misses = {name: 0 for name in motors}
        self._stats = {"bus_transactions": 0, "bus_retries": 0, "bus_bad_status_packets": 0,
                       "bus_stale_reads": 0, "bus_stray_bytes": 0}
        self._stale_by_servo = {name: 0 for name in motors}

    # ---- protocol hooks ---------------------------------------------------------------------
    @abc.abstractmethod
    def _ping_packet(self, servo_id: int) -> bytes: ...

    @abc.abstractmethod
    def _read_packet(self, servo_id: int, address: int, size: int) -> bytes: ...

    @abc.abstractmethod
    def _write_packet(self, servo_id: int, address: int, data: bytes) -> bytes: ...

    @abc.abstractmethod
    def _sync_read_packet(self, address: int, size: int, ids: list[int]) -> bytes: ...

    @abc.abstractmethod
    def _sync_write_packet(self, address: int, size: int, items: list[tuple[int, bytes]]) -> bytes: ...

    @abc.abstractmethod
    def _status_size(self, data_size: int) -> int: ...

    @abc.abstractmethod
    def _parse(self, buf: bytes, expected: list[tuple[int, int]]) -> dict[int, Packet]: ...

    @abc.abstractmethod
    def _fatal_error(self, code: int) -> str | None:
        """What a status packet's error code says, when it means the servo needs attention."""

    # ---- connection ---------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._port is not None

    def connect(self) -> None:
        self._port = self._open_port(self.port_name, self.baudrate, self.timeout_s)
        self._fault = None

    def disconnect(self) -> None:
        with self._lock:
            if self._port is not None:
                try:
                    self._port.close()
                except OSError:
                    pass  # a vanished port is closed already
                self._port = None

    @property
    def fault(self) -> BusError | None:
        """The error that stopped the bus, if one did."""
        return self._fault

    # ---- registers ----------------------------------------------------------------------------
    def register(self, name: str, motor: str) -> Register:
        return self.TABLES[self.motors[motor].model][name]

    def _byteorder(self, motor: str) -> str:
        return self.TABLES[self.motors[motor].model].byteorder

    def _shared(self, register: str, names: list[str]) -> Register:
        """The register, which must sit at the same address and size in every model on a sync call."""
        regs = {self.register(register, n) for n in names}
        if len(regs) != 1:
            raise UserError(f"register {register} differs between the servo models of {', '.join(names)}")
        return regs.pop()

    # ---- transactions -------------------------------------------------------------------------
    def _raise_fault(self, error: BusError) -> None:
        self._fault = error
        raise error

    def _transact(self, instruction: bytes, expected: list[tuple[int, int]], listen: bool = False) -> dict[int, Packet]:
        """Send one instruction and parse what comes back: `expected` (id, data size) in answer
        order; `listen` reads until the timeout (a broadcast ping's unknown number of answers)."""
        if self._fault is not None:
            raise self._fault
        if self._port is None:
            raise BusError(f"{self.port_name}: the bus is not connected")
        self._stats["bus_transactions"] += 1
        try:
            waiting = self._port.in_waiting
            if waiting:  # left over from an earlier answer: never let it pass for this one
                self._stats["bus_stray_bytes"] += waiting
                self._port.reset_input_buffer()
            self._port.write(instruction)
            if not expected:
                return {}
            owed = 1 << 16 if listen else sum(self._status_size(size) for _, size in expected)
            buf = self._port.read(owed)
            if len(buf) == owed and self._port.in_waiting:  # more than owed: damage somewhere
                buf += self._port.read(self._port.in_waiting)
        except OSError as exc:  # pyserial's SerialException is an OSError
            self._raise_fault(PortVanishedError(
                f"{self.port_name}: the serial port vanished ({exc}); the arm was unplugged or lost "
                f"power, nothing more is sent"))
        return self._parse(bytes(buf), expected)

    def _check_status(self, name: str, packet: Packet) -> None:
        text = self._fatal_error(packet.code)
        if text is not None:
            motor = self.motors[name]
            self._raise_fault(ServoFaultError(
                f"servo '{name}' (id {motor.id}) reports {text}: power the arm off and on again "
                f"after removing the cause; the other servos hold their last goal"))

    def _read_many(self, register: str, names: list[str]) -> tuple[dict[str, int], list[str]]:
        """Fresh values of `names` after up to `retries` resends, and the names left without one."""
        reg = self._shared(register, names)
        fresh: dict[str, int] = {}
        pending = list(names)
        for attempt in range(self.retries + 1):
            if attempt:
                self._stats["bus_retries"] += 1
            ids = [self.motors[n].id for n in pending]
            if len(pending) == 1:
                packet = self._read_packet(ids[0], reg.address, reg.size)
            else:
                packet = self._sync_read_packet(reg.address, reg.size, ids)
            statuses = self._transact(packet, [(i, reg.size) for i in ids])
            for name, servo_id in zip(pending, ids):
                status = statuses.get(servo_id)
                value = None if status is None else reg.decode(status.params, self._byteorder(name))
                if value is None:
                    self._stats["bus_bad_status_packets"] += 1
                    continue
                self._check_status(name, status)
                fresh[name] = value
            pending = [n for n in pending if n not in fresh]
            if not pending:
                break
        for name, value in fresh.items():
            self._misses[name] = 0
            self._last[(register, name)] = value
        return fresh, pending

    def read(self, register: str, names: list[str] | None = None) -> dict[str, int]:
        """A sync read of `register` (all motors by default). A servo whose answer stayed damaged
        after the retries gives its last value, counted as a stale read; after `silent_reads`
        such reads in a row it is declared silent."""
        names = list(self.motors) if names is None else list(names)
        with self._lock:
            fresh, missing = self._read_many(register, names)
            for name in missing:
                self._misses[name] += 1
                if self._misses[name] >= self.silent_reads or (register, name) not in self._last:
                    motor = self.motors[name]
                    self._raise_fault(ServoSilentError(
                        f"servo '{name}' (id {motor.id}) stopped answering on {self.port_name} "
                        f"({self._misses[name]} reads in a row without an intact status packet, "
                        f"{self.retries} retries each); the other servos hold their last goal: check "
                        f"its cable and power"))
                self._stats["bus_stale_reads"] += 1
                self._stale_by_servo[name] += 1
            return {n: fresh[n] if n in fresh else self._last[(register, n)] for n in names}

    def read_one(self, register: str, name: str) -> int:
        """One servo's register, fresh (after the retries) or a `ServoSilentError`."""
        return self.read_fresh(register, [name])[name]

    def read_fresh(self, register: str, names: list[str]) -> dict[str, int]:
        """Fresh values only: for connect checks and calibration, where a stale value would be wrong."""
        with self._lock:
            fresh, missing = self._read_many(register, names)
            if missing:
                motor = self.motors[missing[0]]
                self._raise_fault(ServoSilentError(
                    f"servo '{missing[0]}' (id {motor.id}) does not answer on {self.port_name} "
                    f"(reading {register}, {self.retries} retries): check its cable, power and id"))
            return fresh

    def write(self, register: str, values: dict[str, int]) -> None:
        """A sync write (no answer: the fast path for goals). Values are encoded, and refused when
        outside the register's range, before anything is sent."""
        if not values:
            return
        reg = self._shared(register, list(values))
        items = [(self.motors[n].id, reg.encode(v, self._byteorder(n))) for n, v in values.items()]
        with self._lock:
            self._transact(self._sync_write_packet(reg.address, reg.size, items), [])

    def write_acked(self, register: str, values: dict[str, int]) -> None:
        """One WRITE per servo, each acknowledged by its status packet and resent when the answer
        was not intact: for settings (torque, limits, offsets, ids) that must have landed."""
        encoded = {n: self.register(register, n).encode(v, self._byteorder(n)) for n, v in values.items()}
        with self._lock:
            for name, data in encoded.items():
                motor, reg = self.motors[name], self.register(register, name)
                for attempt in range(self.retries + 1):
                    if attempt:
                        self._stats["bus_retries"] += 1
                    status = self._transact(self._write_packet(motor.id, reg.address, data),
                                            [(motor.id, 0)]).get(motor.id)
                    if status is not None:
                        self._check_status(name, status)
                        break
                    self._stats["bus_bad_status_packets"] += 1
                else:
                    self._raise_fault(ServoSilentError(
                        f"servo '{name}' (id {motor.id}) did not acknowledge {register} on "
                        f"{self.port_name} ({self.retries} retries): check its cable, power and id"))

    def torque(self, enabled: bool, names: list[str] | None = None) -> None:
        names = list(self.motors) if names is None else names
        self.write_acked("Torque_Enable", {n: int(enabled) for n in names})

    def ping(self, servo_id: int) -> bool:
        """Whether a servo answers at `servo_id` (one try: pinging is how absence is found)."""
        with self._lock:
            return servo_id in self._transact(self._ping_packet(servo_id), [(servo_id, 0)])

    def broadcast_ping(self, ids: range = range(254)) -> list[int]:
        """The ids of every servo that answers a broadcast ping (listens for the whole timeout)."""
        with self._lock:
            found = self._transact(self._ping_packet(self.BROADCAST), [(i, 0) for i in ids], listen=True)
            return sorted(found)

    def stats(self) -> dict[str, Any]:
        return {**self._stats, "bus_stale_by_servo": dict(self._stale_by_servo)}
