"""Pack fixed-width codes into the one integer of a flattened Verilog port, and back.

Amaranth flattens an array or struct payload into one vector, its first element or field in the
least significant bits; a cocotb handle reads and writes that vector as one unsigned integer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["pack", "unpack", "Field", "fields_of", "pack_fields", "unpack_fields"]


def _check_width(width: int) -> None:
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"Width must be a positive integer, not {width!r}")


def pack(codes: Iterable[int], width: int) -> int:
    """Pack codes of ``width`` bits each (element 0 lowest) into one unsigned integer.

    Negative codes are stored in two's complement.

    Raises
    ------
    ValueError
        If a code does not fit ``width`` bits, signed or unsigned.
    """
    _check_width(width)
    word = 0
    for n, code in enumerate(codes):
        if not -(1 << (width - 1)) <= code < (1 << width):
            raise ValueError(f"Code {code} at index {n} does not fit {width} bits")
        word |= (code & ((1 << width) - 1)) << (n * width)
    return word


def unpack(word: int, width: int, count: int, *, signed: bool = True) -> list[int]:
    """The ``count`` codes of ``width`` bits packed in ``word`` (element 0 lowest)."""
    _check_width(width)
    mask = (1 << width) - 1
    codes = [(word >> (n * width)) & mask for n in range(count)]
    if signed:
        codes = [code - (1 << width) if code >> (width - 1) else code for code in codes]
    return codes


@dataclass(frozen=True)
class Field:
    """One field of a flattened payload: ``width`` bits from bit ``offset``."""

    name: str
    offset: int
    width: int
    signed: bool


def fields_of(layout) -> list[Field]:
    """The fields of an Amaranth ``data.StructLayout``, in bit order.

    A field whose shape is itself a layout is one unsigned field (unpack it with its own layout).
    Only the pytest side calls this; testbenches receive the fields as plain data.
    """
    from amaranth.hdl import Shape

    fields = []
    for name, field in layout:
        shape = Shape.cast(field.shape)
        fields.append(Field(name, field.offset, shape.width, shape.signed))
    return sorted(fields, key=lambda f: f.offset)


def pack_fields(values: Mapping[str, int], fields: Sequence[Field]) -> int:
    """Pack one code per field into one integer; every field must be given."""
    word = 0
    for field in fields:
        word |= pack([values[field.name]], field.width) << field.offset
    return word


def unpack_fields(word: int, fields: Sequence[Field]) -> dict[str, int]:
    """The code of each field in ``word``."""
    return {
        field.name: unpack(word >> field.offset, field.width, 1, signed=field.signed)[0]
        for field in fields
    }
