"""`FeetechBus`: Feetech STS/SCS servos (the SO-100/SO-101's STS3215) on a serial bus.

Only how packets are built and parsed is Feetech's; retries, timeouts and faults are `MotorBus`'s.
"""

from __future__ import annotations

from robodiff.hal.motors import feetech_protocol as fp
from robodiff.hal.motors.bus import MotorBus, Packet

# Errors after which a servo needs a person (and usually a power cycle). The voltage bit is
# checked at connect instead: it flickers under load on a weak supply without harm.
FATAL = {bit: text for bit, text in fp.ERROR_BITS.items() if bit != 0x01}


class FeetechBus(MotorBus):
    BROADCAST = fp.BROADCAST
    TABLES = fp.TABLES
    BAUD_RATES = fp.BAUD_RATES

    def _ping_packet(self, servo_id: int) -> bytes:
        return fp.ping(servo_id)

    def _read_packet(self, servo_id: int, address: int, size: int) -> bytes:
        return fp.read(servo_id, address, size)

    def _write_packet(self, servo_id: int, address: int, data: bytes) -> bytes:
        return fp.write(servo_id, address, data)

    def _sync_read_packet(self, address: int, size: int, ids: list[int]) -> bytes:
        return fp.sync_read(address, size, ids)

    def _sync_write_packet(self, address: int, size: int, items: list[tuple[int, bytes]]) -> bytes:
        return fp.sync_write(address, size, items)

    def _status_size(self, data_size: int) -> int:
        return data_size + 6

    def _parse(self, buf: bytes, expected: list[tuple[int, int]]) -> dict[int, Packet]:
        return fp.parse_statuses(buf, expected)

    def _fatal_error(self, code: int) -> str | None:
        found = [text for bit, text in FATAL.items() if code & bit]
        return " and ".join(found) if found else None


# hardware YAML `bus.protocol` -> the bus class (Dynamixel protocol 2.0 joins here)
BUSES: dict[str, type[MotorBus]] = {"feetech": FeetechBus}
