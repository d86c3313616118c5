"""The payloads of the streams between stages and the loss unit."""

from __future__ import annotations

from amaranth.lib import data

from pbhw.core.fixed import FixedFormat
from rtl_gen.requantizer import shape_of

__all__ = ["error_token", "forward_token", "label_bits"]


def label_bits(classes: int) -> int:
    """Bits of a class label."""
    return max(1, (classes - 1).bit_length())


def forward_token(n: int, fmt: FixedFormat, classes: int) -> data.StructLayout:
    """A forward token: a vector of ``n`` codes of ``fmt``, the sample's label, and ``bubble``
    (set during fill and drain, when the step carries no sample)."""
    return data.StructLayout(
        {
            "bubble": 1,
            "label": label_bits(classes),
            "x": data.ArrayLayout(shape_of(fmt), n),
        }
    )


def error_token(n: int, fmt: FixedFormat) -> data.StructLayout:
    """An error token: ``n`` error codes of ``fmt`` and ``bubble``."""
    return data.StructLayout({"bubble": 1, "e": data.ArrayLayout(shape_of(fmt), n)})
