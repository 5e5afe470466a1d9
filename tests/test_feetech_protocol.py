"""Feetech packets: HARDWARE.md's test vectors, sign-magnitude registers, and a decoder that never
crashes on and never accepts a damaged answer (hypothesis: random bytes, truncations, insertions,
single-byte flips)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robodiff.errors import UserError
from robodiff.hal.motors import feetech_protocol as fp

STS = fp.STS3215


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text)


def test_the_vectors_of_hardware_md():
    assert fp.ping(1) == hexbytes("FF FF 01 02 01 FB")
    assert fp.status(1, 0) == hexbytes("FF FF 01 02 00 FC")
    assert fp.sync_read(56, 2, [1, 2, 3, 4, 5, 6]) == hexbytes("FF FF FE 0A 82 38 02 01 02 03 04 05 06 26")
    assert fp.status(1, 0, STS["Present_Position"].encode(2048, "little")) == hexbytes("FF FF 01 04 00 00 08 F2")
    assert fp.read(1, STS["Present_Position"].address, STS["Present_Position"].size) == \
        hexbytes("FF FF 01 04 02 38 02 BE")


def test_the_vectors_parse_back():
    reply = hexbytes("FF FF 01 04 00 00 08 F2")
    status = fp.parse_statuses(reply, [(1, 2)])[1]
    assert status.code == 0 and STS["Present_Position"].decode(status.params, "little") == 2048
    stream = bytearray(hexbytes("00 13 FF FF FE 0A 82 38 02 01 02 03 04 05 06 26 FF"))
    instruction = fp.next_instruction(stream)
    assert (instruction.id, instruction.code, instruction.params) == (0xFE, fp.SYNC_READ, bytes([56, 2, 1, 2, 3, 4, 5, 6]))
    assert stream == bytearray(b"\xff")  # a trailing 0xFF may start the next header


def test_sync_write_lengths():
    items = [(i, STS["Goal_Position"].encode(100 * i, "little")) for i in (1, 2, 3)]
    packet = fp.sync_write(42, 2, items)
    assert packet[3] == 3 * (2 + 1) + 4 and packet[4] == fp.SYNC_WRITE
    assert fp.next_instruction(bytearray(packet)).params == bytes([42, 2, 1, 100, 0, 2, 200, 0, 3, 44, 1])


@pytest.mark.parametrize("name, value, raw", [
    ("Homing_Offset", -2047, 0x0FFF), ("Homing_Offset", -1, 0x0801), ("Homing_Offset", 2047, 0x07FF),
    ("Goal_Position", -5, 0x8005), ("Present_Load", -1000, 0x07E8), ("Present_Speed", 300, 300),
])
def test_sign_magnitude(name, value, raw):
    reg = STS[name]
    assert reg.encode(value, "little") == raw.to_bytes(2, "little")
    assert reg.decode(raw.to_bytes(2, "little"), "little") == value


def test_values_outside_a_register_are_refused_both_ways():
    with pytest.raises(UserError, match="Homing_Offset: 2048 is outside -2047..2047"):
        STS["Homing_Offset"].encode(2048, "little")
    assert STS["Present_Position"].decode((4096).to_bytes(2, "little"), "little") is None
    assert STS["Present_Position"].decode((0x8000 | 5).to_bytes(2, "little"), "little") is None  # negative
    assert STS["Present_Load"].decode((0x0800).to_bytes(2, "little"), "little") is None  # above the sign bit
    assert STS["Homing_Offset"].decode((0x0800).to_bytes(2, "little"), "little") is None  # negative zero


def test_an_answer_with_a_silent_servo_keeps_the_others():
    packets = {i: fp.status(i, 0, STS["Present_Position"].encode(1000 + i, "little")) for i in range(1, 7)}
    expected = [(i, 2) for i in range(1, 7)]
    buf = b"".join(packets[i] for i in (1, 2, 4, 5, 6))
    assert sorted(fp.parse_statuses(buf, expected)) == [1, 2, 4, 5, 6]
    # a packet damaged in place (same length) costs only itself
    damaged = bytearray(packets[3])
    damaged[5] ^= 0x10
    buf = packets[1] + packets[2] + bytes(damaged) + packets[4] + packets[5] + packets[6]
    assert sorted(fp.parse_statuses(buf, expected)) == [1, 2, 4, 5, 6]
    # out of order is not how servos answer: the one behind is dropped with what follows
    swapped = packets[2] + packets[1]
    assert sorted(fp.parse_statuses(swapped, expected)) == []


# ---- hypothesis: the decoder on damaged answers --------------------------------------------------
ANSWERS = st.lists(st.tuples(st.integers(0, 4095), st.sampled_from([0, 0, 0, 0x20])), min_size=1, max_size=6)


def answer(values: list[tuple[int, int]]) -> tuple[bytes, list[tuple[int, int]], dict[int, fp.Packet]]:
    """A sync read's answer from servos 1..n, what was asked, and the packets as sent."""
    packets = [fp.status(i + 1, err, STS["Present_Position"].encode(v, "little")) for i, (v, err) in enumerate(values)]
    expected = [(i + 1, 2) for i in range(len(values))]
    return b"".join(packets), expected, fp.parse_statuses(b"".join(packets), expected)


def assert_only_intact(damaged: bytes, expected, original: dict[int, fp.Packet]) -> None:
    for servo_id, packet in fp.parse_statuses(damaged, expected).items():
        assert packet == original[servo_id], (damaged.hex(" "), servo_id)
        value = STS["Present_Position"].decode(packet.params, "little")
        assert value is not None and 0 <= value <= 4095


@settings(max_examples=400, deadline=None)
@given(ANSWERS, st.data())
def test_a_flipped_byte_is_never_accepted(values, data):
    buf, expected, original = answer(values)
    assert len(original) == len(values)  # intact, everything is accepted
    pos = data.draw(st.integers(0, len(buf) - 1))
    flip = data.draw(st.integers(1, 255))
    damaged = bytearray(buf)
    damaged[pos] ^= flip
    accepted = fp.parse_statuses(bytes(damaged), expected)
    assert_only_intact(bytes(damaged), expected, original)
    assert len(accepted) < len(values)  # the damaged one is always among those refused


@settings(max_examples=400, deadline=None)
@given(ANSWERS, st.data())
def test_an_inserted_or_deleted_byte_is_never_accepted(values, data):
    buf, expected, original = answer(values)
    pos = data.draw(st.integers(0, len(buf)))
    if data.draw(st.booleans()):
        damaged = buf[:pos] + bytes([data.draw(st.integers(0, 255))]) + buf[pos:]
    else:
        damaged = buf[:pos] + buf[pos + 1:]
    assert_only_intact(damaged, expected, original)


@settings(max_examples=300, deadline=None)
@given(ANSWERS, st.data())
def test_a_truncated_answer_keeps_only_complete_packets(values, data):
    buf, expected, original = answer(values)
    cut = data.draw(st.integers(0, len(buf) - 1))
    accepted = fp.parse_statuses(buf[:cut], expected)
    assert_only_intact(buf[:cut], expected, original)
    assert len(accepted) < len(values)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80), st.lists(st.tuples(st.integers(0, 253), st.integers(0, 4)), max_size=6))
def test_random_bytes_never_crash_the_decoders(buf, expected):
    for servo_id, packet in fp.parse_statuses(buf, expected).items():
        assert fp.frame_at(packet_bytes(packet), 0) == packet and servo_id == packet.id
    stream = bytearray(buf)
    while (instruction := fp.next_instruction(stream)) is not None:
        assert fp.frame_at(packet_bytes(instruction), 0) == instruction
    assert len(stream) <= len(buf)


def packet_bytes(packet: fp.Packet) -> bytes:
    return fp.packet(packet.id, packet.code, packet.params)
