"""The Feetech SCS/STS protocol: packets and the STS3215 control table (facts in HARDWARE.md).

    instruction  FF FF | ID | LEN | INST | params... | CHK      LEN = len(params) + 2
    status       FF FF | ID | LEN | ERR  | data...   | CHK      CHK = ~(ID + LEN + INST/ERR + sum) & 0xFF

Pure functions on bytes, shared by the bus driver (which sends instructions and parses statuses)
and the bus emulator (which does the opposite), so the two can only agree on what HARDWARE.md says
and its test vectors pin down.
"""

from __future__ import annotations

from robodiff.hal.motors.bus import Packet
from robodiff.hal.motors.registers import Register, RegisterTable

HEADER = b"\xff\xff"
BROADCAST = 0xFE
MAX_ID = 253
MAX_PACKET = 250
PING, READ, WRITE, REG_WRITE, ACTION, SYNC_READ, SYNC_WRITE = 0x01, 0x02, 0x03, 0x04, 0x05, 0x82, 0x83
# Status error bits (bit 7 is always 0 in a status packet).
ERROR_BITS = {0x01: "input voltage", 0x02: "angle sensor", 0x04: "overheating", 0x08: "over-current",
              0x20: "overload"}
# Baud_Rate register value -> bits/s, where Feetech's and LeRobot's tables agree (0-4).
BAUD_RATES = {0: 1_000_000, 1: 500_000, 2: 250_000, 3: 128_000, 4: 115_200}


def checksum(body: bytes) -> int:
    return ~sum(body) & 0xFF


def packet(servo_id: int, code: int, params: bytes = b"") -> bytes:
    if not 0 <= servo_id <= BROADCAST or len(params) + 6 > MAX_PACKET:
        raise ValueError(f"no such packet: id {servo_id}, {len(params)} parameter bytes")
    body = bytes((servo_id, len(params) + 2, code)) + bytes(params)
    return HEADER + body + bytes((checksum(body),))


def ping(servo_id: int) -> bytes:
    return packet(servo_id, PING)


def read(servo_id: int, address: int, size: int) -> bytes:
    return packet(servo_id, READ, bytes((address, size)))


def write(servo_id: int, address: int, data: bytes) -> bytes:
    return packet(servo_id, WRITE, bytes((address,)) + data)


def sync_read(address: int, size: int, ids: list[int]) -> bytes:
    return packet(BROADCAST, SYNC_READ, bytes((address, size, *ids)))


def sync_write(address: int, size: int, items: list[tuple[int, bytes]]) -> bytes:
    params = bytes((address, size)) + b"".join(bytes((i,)) + data for i, data in items)
    return packet(BROADCAST, SYNC_WRITE, params)


def status(servo_id: int, error: int, data: bytes = b"") -> bytes:
    return packet(servo_id, error, data)


def frame_at(buf: bytes, pos: int) -> Packet | None:
    """The packet starting exactly at `pos` when it is complete and its checksum holds."""
    if len(buf) - pos < 6 or buf[pos:pos + 2] != HEADER or buf[pos + 2] == 0xFF:
        return None
    length = buf[pos + 3]
    end = pos + length + 4
    if length < 2 or length + 4 > MAX_PACKET or end > len(buf):
        return None
    if checksum(buf[pos + 2:end - 1]) != buf[end - 1]:
        return None
    return Packet(buf[pos + 2], buf[pos + 4], bytes(buf[pos + 5:end - 1]), end - pos)


def parse_statuses(buf: bytes, expected: list[tuple[int, int]]) -> dict[int, Packet]:
    """The status packets of `buf` that are certainly intact, by servo id.

    `buf` is everything received in answer to one instruction; `expected` lists (id, data bytes)
    in the order the servos answer. A one-byte checksum alone lets a damaged packet through now
    and then (a byte inserted into a packet can shift a data byte into the checksum's place), so
    a packet is accepted only when it is exactly what its servo owes (id, length, error bit 7
    clear, checksum) AND it is followed by the next expected packet, a damaged packet of the
    right length in its place, or the end of `buf`: damage that changes where packets start
    always breaks one of those for the packet that took it. A servo that did not answer at all
    leaves no gap, so the others still count.
    """
    accepted: list[Packet] = []
    pos, queue = 0, list(expected)
    while queue:
        ids = [servo_id for servo_id, _ in queue]
        frame = frame_at(buf, pos)
        if frame is None or frame.id not in ids:
            skip = _damaged_in_place(buf, pos, queue)
            if skip is None:
                break
            pos, queue = pos + skip[0], queue[skip[1] + 1:]
            continue
        k = ids.index(frame.id)
        if len(frame.params) != queue[k][1] or frame.code & 0x80:
            break
        accepted.append(frame)
        pos += frame.size
        queue = queue[k + 1:]
    if pos != len(buf) and accepted:
        accepted.pop()  # what follows it is not a packet we expected: it may hold this one's damage
    return {p.id: p for p in accepted}


def _damaged_in_place(buf: bytes, pos: int, queue: list[tuple[int, int]]) -> tuple[int, int] | None:
    """(size, index in `queue`) of a damaged packet at `pos` whose header, id and length are the
    expected ones (a byte changed inside it, nothing inserted or lost), so the next one starts
    right after it; None when there is no such packet."""
    if len(buf) - pos < 6 or buf[pos:pos + 2] != HEADER:
        return None
    ids = [servo_id for servo_id, _ in queue]
    if buf[pos + 2] not in ids:
        return None
    k = ids.index(buf[pos + 2])
    size = queue[k][1] + 6
    return (size, k) if buf[pos + 3] == queue[k][1] + 2 and pos + size <= len(buf) else None


def next_instruction(buf: bytearray) -> Packet | None:
    """Take the next intact packet off the front of a received stream (the servo's side).

    Bytes before a header are dropped; a frame whose checksum fails loses its first byte, so the
    search resynchronises on the next header; an incomplete frame waits for more bytes."""
    while True:
        start = buf.find(HEADER)
        if start < 0:
            del buf[:max(0, len(buf) - 1)]  # keep a trailing 0xFF: it may start a header
            return None
        del buf[:start]
        if len(buf) < 4 or len(buf) < buf[3] + 4:
            if len(buf) >= 4 and (buf[3] < 2 or buf[3] + 4 > MAX_PACKET):
                del buf[:1]
                continue
            return None
        frame = frame_at(buf, 0)
        if frame is None:
            del buf[:1]
            continue
        del buf[:frame.size]
        return frame


def _r(name: str, address: int, size: int, low: int, high: int, sign_bit: int | None = None) -> Register:
    return Register(name, address, size, low, high, sign_bit)


# STS3215 (SO-100/SO-101): addresses and sizes from HARDWARE.md; the ranges are what the firmware
# accepts or reports in position mode (a read outside them is a damaged packet).
STS3215 = RegisterTable("sts3215", 777, "little", [
    _r("Model_Number", 3, 2, 0, 65535),
    _r("ID", 5, 1, 0, MAX_ID),
    _r("Baud_Rate", 6, 1, 0, 7),
    _r("Return_Delay", 7, 1, 0, 254),
    _r("Min_Position_Limit", 9, 2, 0, 4095),
    _r("Max_Position_Limit", 11, 2, 0, 4095),
    _r("Max_Torque", 16, 2, 0, 1000),
    _r("P_Coefficient", 21, 1, 0, 254),
    _r("D_Coefficient", 22, 1, 0, 254),
    _r("I_Coefficient", 23, 1, 0, 254),
    _r("Protection_Current", 28, 2, 0, 2047),
    _r("Homing_Offset", 31, 2, -2047, 2047, sign_bit=11),
    _r("Operating_Mode", 33, 1, 0, 3),
    _r("Torque_Enable", 40, 1, 0, 128),
    _r("Acceleration", 41, 1, 0, 254),
    _r("Goal_Position", 42, 2, -32767, 32767, sign_bit=15),
    _r("Goal_Velocity", 46, 2, -32767, 32767, sign_bit=15),
    _r("Torque_Limit", 48, 2, 0, 1000),
    _r("Lock", 55, 1, 0, 1),
    _r("Present_Position", 56, 2, 0, 4095, sign_bit=15),
    _r("Present_Speed", 58, 2, -32767, 32767, sign_bit=15),
    _r("Present_Load", 60, 2, -1000, 1000, sign_bit=10),
    _r("Present_Voltage", 62, 1, 0, 254),
    _r("Present_Temperature", 63, 1, 0, 150),
    _r("Moving", 66, 1, 0, 1),
    _r("Present_Current", 69, 2, -2047, 2047, sign_bit=15),
])

TABLES = {"sts3215": STS3215}
