"""Protobuf's wire format, by hand: the few encoders .ckpt and strategy files need, and a strict
in-memory reader of small messages. The base install has no protobuf, and MindSpore's generated
classes import MindSpore."""
from __future__ import annotations

from typing import Iterator

VARINT, I64, LEN, I32 = 0, 1, 2, 5


class WireError(ValueError):
    """A message that does not parse; the caller names the file."""


def varint(n: int) -> bytes:
    """An unsigned varint; a negative int32/int64 goes out as its 64-bit two's complement, as protobuf does."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def len_field(field: int, body_len: int) -> bytes:
    return key(field, LEN) + varint(body_len)


def message(field: int, body: bytes) -> bytes:
    return len_field(field, len(body)) + body


def text(field: int, value: str) -> bytes:
    return message(field, value.encode("utf-8"))


def number(field: int, value: int) -> bytes:
    return key(field, VARINT) + varint(value)


def numbers(field: int, values: tuple[int, ...] | list[int]) -> bytes:
    """A proto2 repeated number: one field per value, not packed, as MindSpore's C++ writes it."""
    return b"".join(number(field, v) for v in values)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(data):
            raise WireError("the message ends inside a number")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("a number is longer than 10 bytes")


def fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field, wire type, value) of one message: an int for numbers, bytes for anything length-prefixed."""
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        field, wire = tag >> 3, tag & 7
        if wire == VARINT:
            value, pos = _read_varint(data, pos)
        elif wire == LEN:
            n, pos = _read_varint(data, pos)
            if n > len(data) - pos:
                raise WireError(f"a field declares {n} bytes, but its message has {len(data) - pos} left")
            value, pos = data[pos:pos + n], pos + n
        elif wire in (I64, I32):
            n = 8 if wire == I64 else 4
            if n > len(data) - pos:
                raise WireError("a fixed-size field runs past the end of its message")
            value, pos = int.from_bytes(data[pos:pos + n], "little"), pos + n
        else:
            raise WireError(f"unexpected wire type {wire}")
        yield field, wire, value


def signed(n: int) -> int:
    """An int32/int64 read back from its 64-bit two's complement varint."""
    return n - (1 << 64) if n >= 1 << 63 else n


def repeated_numbers(wire: int, value: int | bytes) -> list[int]:
    """One occurrence of a repeated number field, packed (LEN) or not: readers must accept both."""
    if wire == VARINT:
        return [value]  # type: ignore[list-item]
    if wire != LEN:
        raise WireError(f"a repeated number has wire type {wire}")
    out, pos, data = [], 0, value
    while pos < len(data):  # type: ignore[arg-type]
        n, pos = _read_varint(data, pos)  # type: ignore[arg-type]
        out.append(n)
    return out
