"""Fixed-point formats, rounding, overflow and quantization on integer tensors.

A value in :class:`FixedFormat` ``(width, frac, signed)`` is stored as its raw integer code ``r``;
it stands for ``r * 2**-frac``. Every function here computes on ``int64`` tensors of raw codes with
integer operations only, so the golden model, the trainer and the generated RTL agree bit for bit.
Floats enter only through :func:`quantize`, which decomposes each float64 exactly into
``mantissa * 2**exponent`` and rounds that integer, so no intermediate float can round twice.

Rounding a raw code ``raw`` right by ``s`` bits (:func:`shift_round`) uses one of the
:class:`Rounding` modes. Stochastic rounding is defined so that hardware can implement it with one
32-bit comparator:

* ``f = (raw - floor(raw / 2**s) * 2**s) / 2**s`` is the exact discarded fraction, in ``[0, 1)``;
* ``F = floor(f * 2**32)`` is the top 32 discarded bits (zero-padded below when ``s < 32``);
* ``r`` is the element's 32-bit random word;
* the result is ``floor(raw / 2**s) + (1 if r < F else 0)``.

So ``P(round up) = F / 2**32``, the result is always the floor or the floor plus one, and the
rounding is exactly unbiased when ``s <= 32``. When ``s <= 0`` nothing is discarded and no word is
used.

Random words come from the counter-based generator Threefry-2x32 (Salmon et al., "Parallel random
numbers: as easy as 1, 2, 3", SC 2011; the Random123 library), which needs only 32-bit additions,
rotations and exclusive-ors. The word for an element is the first output word of
``threefry2x32(k0=seed, k1=stream, c0=step, c1=index)`` with :data:`THREEFRY_ROUNDS` rounds, where
``index`` is by default the element's row-major position in the tensor being rounded.
``docs/numerics_random.md`` describes the rule for the RTL.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike

__all__ = [
    "Rounding",
    "Overflow",
    "as_rounding",
    "as_overflow",
    "FixedFormat",
    "StochasticKey",
    "THREEFRY_ROUNDS",
    "threefry2x32",
    "random_words",
    "shift_round",
    "overflow_to",
    "quantize",
    "requantize",
    "to_float",
]


class Rounding(enum.Enum):
    """How a value between two codes becomes a code."""

    FLOOR = "floor"
    TOWARD_ZERO = "toward_zero"
    HALF_UP = "half_up"  # ties toward +inf
    HALF_EVEN = "half_even"  # ties to the even code
    STOCHASTIC = "stochastic"


class Overflow(enum.Enum):
    """What happens to a code outside the format's range."""

    WRAP = "wrap"  # keep the low `width` bits (two's complement when signed)
    SATURATE = "saturate"  # clamp to the nearest representable code


def _as_mode(value, enum_type, name):
    if isinstance(value, enum_type):
        return value
    allowed = ", ".join(repr(member.value) for member in enum_type)
    if not isinstance(value, str):
        article = "an" if enum_type.__name__[0] in "AEIOU" else "a"
        raise TypeError(
            f"{name} must be {article} {enum_type.__name__} or one of {allowed}, not {value!r}"
        )
    try:
        return enum_type(value)
    except ValueError:
        raise ValueError(f"{name} must be one of {allowed}, not {value!r}") from None


def as_rounding(value: Rounding | str) -> Rounding:
    """Return ``value`` as a :class:`Rounding`, accepting a member or its string value.

    Raises
    ------
    TypeError
        If ``value`` is neither a :class:`Rounding` nor a string.
    ValueError
        If ``value`` is a string that names no rounding mode.
    """
    return _as_mode(value, Rounding, "Rounding")


def as_overflow(value: Overflow | str) -> Overflow:
    """Return ``value`` as an :class:`Overflow`, accepting a member or its string value.

    Raises
    ------
    TypeError
        If ``value`` is neither an :class:`Overflow` nor a string.
    ValueError
        If ``value`` is a string that names no overflow mode.
    """
    return _as_mode(value, Overflow, "Overflow")


_MAX_WIDTH = 62  # codes and our own intermediate products (code << 1, floor + 1, ...) fit int64


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ldexp(mantissa: int, exponent: int) -> float:
    """``mantissa * 2**exponent`` as the nearest float, infinite on overflow instead of raising."""
    try:
        return math.ldexp(float(mantissa), exponent)
    except OverflowError:
        return math.copysign(math.inf, mantissa)


@dataclass(frozen=True)
class FixedFormat:
    """A fixed-point number format: raw code ``r`` stands for ``r * 2**-frac``.

    Parameters
    ----------
    width : int
        Number of bits of the code, 1 to 62 (at least 2 when signed).
    frac : int
        Number of fractional bits; may be negative or exceed ``width``.
    signed : bool
        Two's complement codes ``[-2**(width-1), 2**(width-1) - 1]`` when true,
        ``[0, 2**width - 1]`` otherwise.

    Raises
    ------
    TypeError
        If ``width`` or ``frac`` is not an integer, or ``signed`` not a bool.
    ValueError
        If ``width`` is out of range.
    """

    width: int
    frac: int
    signed: bool = True

    def __post_init__(self):
        if not _is_int(self.width):
            raise TypeError(f"Width must be a positive integer, not {self.width!r}")
        if self.width < 1:
            raise ValueError(f"Width must be a positive integer, not {self.width!r}")
        if self.width > _MAX_WIDTH:
            raise ValueError(f"Width must be at most {_MAX_WIDTH}, not {self.width!r}")
        if not _is_int(self.frac):
            raise TypeError(f"Fraction bits must be an integer, not {self.frac!r}")
        if not isinstance(self.signed, bool):
            raise TypeError(f"Signedness must be a bool, not {self.signed!r}")
        if self.signed and self.width < 2:
            raise ValueError(f"Width of a signed format must be at least 2, not {self.width!r}")

    @property
    def min_code(self) -> int:
        """Smallest raw code."""
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max_code(self) -> int:
        """Largest raw code."""
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    @property
    def resolution(self) -> float:
        """Value of one code step, ``2**-frac``."""
        return _ldexp(1, -self.frac)

    @property
    def min_value(self) -> float:
        """Value of :attr:`min_code` (nearest float when ``width > 53``)."""
        return _ldexp(self.min_code, -self.frac)

    @property
    def max_value(self) -> float:
        """Value of :attr:`max_code` (nearest float when ``width > 53``)."""
        return _ldexp(self.max_code, -self.frac)

    def __str__(self) -> str:
        return f"{'s' if self.signed else 'u'}{self.width}.{self.frac}"


_U32 = 0xFFFF_FFFF


def _check_u32(value, name):
    if not _is_int(value):
        raise TypeError(f"{name} must be an integer in [0, 2**32), not {value!r}")
    if not 0 <= value <= _U32:
        raise ValueError(f"{name} must be an integer in [0, 2**32), not {value!r}")


@dataclass(frozen=True)
class StochasticKey:
    """Where the random words for stochastic rounding come from.

    Parameters
    ----------
    seed : int
        Threefry key word ``k0``; one per training run.
    stream : int
        Threefry key word ``k1``; tells apart the roundings within a step (layer, role).
    step : int
        Threefry counter word ``c0``; the training step.

    All three lie in ``[0, 2**32)``. The counter word ``c1`` is the element index.
    """

    seed: int
    stream: int
    step: int

    def __post_init__(self):
        _check_u32(self.seed, "Seed")
        _check_u32(self.stream, "Stream")
        _check_u32(self.step, "Step")


THREEFRY_ROUNDS = 13  # Random123 knows no statistical failure from 13 (defaults to a safe 20)
_THREEFRY_ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
_THREEFRY_PARITY = 0x1BD11BDA


def _as_u32_tensor(value, name) -> torch.Tensor:
    if _is_int(value):
        _check_u32(value, name)
        return torch.tensor(value, dtype=torch.int64)
    tensor = _as_int64(value, name)
    if tensor.numel() and (int(tensor.min()) < 0 or int(tensor.max()) > _U32):
        raise ValueError(f"{name} must hold values in [0, 2**32)")
    return tensor


def threefry2x32(
    k0: torch.Tensor | int,
    k1: torch.Tensor | int,
    c0: torch.Tensor | int,
    c1: torch.Tensor | int,
    rounds: int = THREEFRY_ROUNDS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Threefry-2x32 block function of Random123, element-wise with broadcasting.

    Parameters
    ----------
    k0, k1 : Tensor or int
        Key words, values in ``[0, 2**32)``.
    c0, c1 : Tensor or int
        Counter words, values in ``[0, 2**32)``.
    rounds : int
        Number of rounds; Random123 defaults to 20, pbhw uses :data:`THREEFRY_ROUNDS`.

    Returns
    -------
    tuple of Tensor
        The two output words ``(x0, x1)`` as int64 tensors of uint32 values.
    """
    if not _is_int(rounds):
        raise TypeError(f"Rounds must be a non-negative integer, not {rounds!r}")
    if rounds < 0:
        raise ValueError(f"Rounds must be a non-negative integer, not {rounds!r}")
    k0, k1 = _as_u32_tensor(k0, "k0"), _as_u32_tensor(k1, "k1")
    c0, c1 = _as_u32_tensor(c0, "c0"), _as_u32_tensor(c1, "c1")
    # Words are uint32 values held in int64, so sums and left shifts never overflow before masking.
    ks = (k0, k1, k0 ^ k1 ^ _THREEFRY_PARITY)
    x0, x1 = (c0 + ks[0]) & _U32, (c1 + ks[1]) & _U32
    x0, x1 = torch.broadcast_tensors(x0, x1)
    for i in range(rounds):
        rotation = _THREEFRY_ROTATIONS[i % 8]
        x0 = (x0 + x1) & _U32
        x1 = ((x1 << rotation) | (x1 >> (32 - rotation))) & _U32
        x1 = x1 ^ x0
        if i % 4 == 3:  # key injection
            j = (i + 1) // 4
            x0 = (x0 + ks[j % 3]) & _U32
            x1 = (x1 + ks[(j + 1) % 3] + j) & _U32
    return x0, x1


def random_words(key: StochasticKey, index: torch.Tensor) -> torch.Tensor:
    """The 32-bit random word of each element for stochastic rounding.

    Parameters
    ----------
    key : StochasticKey
        Seed, stream and step.
    index : Tensor
        Integer element indices in ``[0, 2**32)``.

    Returns
    -------
    Tensor
        int64 tensor of uint32 words, shaped like ``index``: the first output word of
        ``threefry2x32(key.seed, key.stream, key.step, index)``.
    """
    if not isinstance(key, StochasticKey):
        raise TypeError(f"Key must be a StochasticKey, not {key!r}")
    index = _as_u32_tensor(index, "Index")
    return threefry2x32(key.seed, key.stream, key.step, index)[0]


def _as_int64(value, name) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(f"{name} must be an integer tensor, not a {tensor.dtype} tensor")
    return tensor.to(torch.int64)


# Shift amounts beyond this behave like this one for any int64 code, so clamping them is exact and
# keeps shift arithmetic within int64 whatever Python int the caller passes.
_SHIFT_LIMIT = 4096


def _as_shift(shift) -> torch.Tensor:
    if _is_int(shift):
        return torch.tensor(max(-_SHIFT_LIMIT, min(_SHIFT_LIMIT, shift)), dtype=torch.int64)
    if isinstance(shift, torch.Tensor) and not (shift.is_floating_point() or shift.is_complex()):
        return shift.to(torch.int64).clamp(-_SHIFT_LIMIT, _SHIFT_LIMIT)
    raise TypeError(f"Shift must be an integer or an integer tensor, not {shift!r}")


def _floor_shift(raw: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``floor(raw / 2**k)`` for any ``k >= 0``: an arithmetic shift saturates at the sign."""
    return raw >> k.clamp(0, 63)


def _bit(raw: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bit ``k`` of ``raw`` in infinite two's complement; false for ``k < 0``."""
    return ((_floor_shift(raw, k) & 1) == 1) & (k >= 0)


def _low_bits(raw: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bits ``0 .. k-1`` of ``raw``, sign-extended bits included, i.e. ``raw mod 2**k`` as bits."""
    mask = torch.where(k >= 64, -1, ~(-1 << k.clamp(0, 63)))
    return raw & mask


def _check_random(random, shape) -> torch.Tensor:
    if random is None:
        raise ValueError("Random words are required for stochastic rounding")
    random = _as_u32_tensor(random, "Random words")
    try:
        return random.broadcast_to(shape)
    except RuntimeError:
        raise ValueError(
            f"Random words of shape {tuple(random.shape)} do not broadcast to {tuple(shape)}"
        ) from None


def shift_round(
    raw: torch.Tensor,
    shift: int | torch.Tensor,
    rounding: Rounding | str,
    *,
    random: torch.Tensor | None = None,
) -> torch.Tensor:
    """Divide raw codes by ``2**shift`` and round to an integer, exactly.

    Parameters
    ----------
    raw : Tensor
        Integer codes (any int64 value).
    shift : int or Tensor
        Bits to shift right, per element if a tensor broadcastable to ``raw``. A shift ``<= 0``
        is an exact left shift; the caller guarantees that it does not overflow int64.
    rounding : Rounding or str
        Rounding mode; see the module documentation for :attr:`Rounding.STOCHASTIC`.
    random : Tensor, optional
        Random words in ``[0, 2**32)`` broadcastable to the result; required for (and only used
        by) stochastic rounding.

    Returns
    -------
    Tensor
        int64 tensor, ``raw`` and ``shift`` broadcast together.
    """
    rounding = as_rounding(rounding)
    raw, shift = torch.broadcast_tensors(_as_int64(raw, "Raw"), _as_shift(shift))
    s = shift.clamp(min=0)
    down = _floor_shift(raw, s)  # floor(raw / 2**s); for s >= 1 at most 2**62, so down + 1 fits
    if rounding is Rounding.FLOOR:
        up = torch.zeros_like(raw, dtype=torch.bool)
    elif rounding is Rounding.TOWARD_ZERO:
        up = (raw < 0) & (_low_bits(raw, s) != 0)
    elif rounding is Rounding.HALF_UP:
        up = _bit(raw, s - 1)  # discarded fraction >= 1/2
    elif rounding is Rounding.HALF_EVEN:
        above_half = _low_bits(raw, s - 1) != 0
        up = _bit(raw, s - 1) & (above_half | ((down & 1) == 1))
    else:
        random = _check_random(random, raw.shape)
        # F = floor(f * 2**32): the top 32 discarded bits, or all of them padded with zeros below.
        wide = _floor_shift(raw, s - 32) - (down << 32)  # s >= 32: then |down| < 2**31
        narrow = _low_bits(raw, s) << (32 - s).clamp(0, 32)
        up = random < torch.where(s >= 32, wide, narrow)
    rounded = down + up
    return torch.where(shift < 0, raw << (-shift).clamp(0, 63), rounded)


def _check_format(fmt, name) -> FixedFormat:
    if not isinstance(fmt, FixedFormat):
        raise TypeError(f"{name} must be a FixedFormat, not {fmt!r}")
    return fmt


def overflow_to(
    raw: torch.Tensor, fmt: FixedFormat, overflow: Overflow | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring integer codes into the code range of ``fmt``.

    Parameters
    ----------
    raw : Tensor
        Integer codes (any int64 value).
    fmt : FixedFormat
        Target format; only its width and signedness matter.
    overflow : Overflow or str
        :attr:`Overflow.SATURATE` clamps to ``[fmt.min_code, fmt.max_code]``; :attr:`Overflow.WRAP`
        keeps the low ``fmt.width`` bits, read as two's complement when signed.

    Returns
    -------
    codes : Tensor
        int64 codes of ``fmt``.
    out_of_range : Tensor
        Bool mask of the elements of ``raw`` outside the code range.
    """
    fmt = _check_format(fmt, "Format")
    overflow = as_overflow(overflow)
    raw = _as_int64(raw, "Raw")
    out_of_range = (raw < fmt.min_code) | (raw > fmt.max_code)
    if overflow is Overflow.SATURATE:
        return raw.clamp(fmt.min_code, fmt.max_code), out_of_range
    return _wrap_bits(raw & ((1 << fmt.width) - 1), fmt), out_of_range


def _wrap_bits(low: torch.Tensor, fmt: FixedFormat) -> torch.Tensor:
    """Read ``width``-bit patterns ``low`` (in ``[0, 2**width)``) as codes of ``fmt``."""
    if not fmt.signed:
        return low
    return torch.where(low > fmt.max_code, low - (1 << fmt.width), low)


def _shift_left_into(
    raw: torch.Tensor, k: torch.Tensor, fmt: FixedFormat, overflow: Overflow
) -> tuple[torch.Tensor, torch.Tensor]:
    """``overflow_to(raw * 2**k, fmt, overflow)`` for ``k >= 0`` without ever forming a product that
    does not fit int64: range checks compare ``raw`` with the range shifted right instead."""
    kc = k.clamp(0, 63)
    upper = torch.full_like(raw, fmt.max_code) >> kc  # raw * 2**k <= max_code  <=>  raw <= upper
    lower = -(torch.full_like(raw, -fmt.min_code) >> kc)  # ceil(min_code / 2**k)
    high, low = raw > upper, raw < lower
    out_of_range = high | low
    if overflow is Overflow.SATURATE:
        in_range = torch.where(out_of_range, 0, raw) << kc
        return torch.where(
            high, fmt.max_code, torch.where(low, fmt.min_code, in_range)
        ), out_of_range
    # (raw * 2**k) mod 2**width only depends on raw mod 2**(width - k).
    bits = _low_bits(raw, (fmt.width - k).clamp(min=0)) << kc
    return _wrap_bits(bits, fmt), out_of_range


def _rescale(raw, shift, fmt, rounding, overflow, random):
    """Codes of ``fmt`` for ``raw * 2**-shift`` (per-element ``shift``) and the overflow mask."""
    codes, out_of_range = overflow_to(
        shift_round(raw, shift.clamp(min=0), rounding, random=random), fmt, overflow
    )
    left = shift < 0
    if bool(left.any()):
        left_codes, left_out = _shift_left_into(raw, (-shift).clamp(min=0), fmt, overflow)
        codes = torch.where(left, left_codes, codes)
        out_of_range = torch.where(left, left_out, out_of_range)
    return codes, out_of_range


def _stochastic_words(rounding, key, index, shape, device) -> torch.Tensor | None:
    if rounding is not Rounding.STOCHASTIC:
        return None
    if key is None:
        raise ValueError("key is required for stochastic rounding")
    if index is None:
        index = torch.arange(math.prod(shape), dtype=torch.int64, device=device).reshape(shape)
    else:
        index = _as_int64(index, "Index")
        if index.shape != shape:
            raise ValueError(
                f"Index must have the shape {tuple(shape)} of the values, not {tuple(index.shape)}"
            )
    return random_words(key, index)


_REAL_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_REAL_DTYPES += (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _as_real_tensor(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        # Through NumPy so that Python floats become float64 (torch would pick float32); the copy
        # is contiguous and writable, which torch.from_numpy needs.
        x = torch.from_numpy(np.array(x))
    if x.dtype not in _REAL_DTYPES:
        raise TypeError(f"x must hold real numbers, not {x.dtype} values")
    return x.detach()


def quantize(
    x: torch.Tensor | ArrayLike,
    fmt: FixedFormat,
    rounding: Rounding | str = Rounding.HALF_EVEN,
    overflow: Overflow | str = Overflow.SATURATE,
    *,
    key: StochasticKey | None = None,
    index: torch.Tensor | None = None,
    return_saturated: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Round real numbers to codes of ``fmt``, exactly for every finite float.

    Parameters
    ----------
    x : array_like
        Anything :func:`torch.as_tensor` accepts; floats must be finite. Integer tensors are taken
        exactly, floats as float64 (a widening that never rounds).
    fmt : FixedFormat
        Target format.
    rounding : Rounding or str
        Rounding mode; ties are decided on the exact value.
    overflow : Overflow or str
        What to do with values outside the range of ``fmt``.
    key : StochasticKey, optional
        Required for (and only used by) stochastic rounding.
    index : Tensor, optional
        Element indices for the random words, shaped like ``x``; row-major positions by default.
    return_saturated : bool
        Also return the bool mask of elements that overflowed (saturated or wrapped);
        ``int(mask.sum())`` is the number of saturation events.

    Returns
    -------
    Tensor or tuple of Tensor
        int64 codes shaped like ``x``, and the overflow mask if ``return_saturated``.
    """
    fmt = _check_format(fmt, "Format")
    rounding, overflow = as_rounding(rounding), as_overflow(overflow)
    x = _as_real_tensor(x)
    random = _stochastic_words(rounding, key, index, x.shape, x.device)
    if x.is_floating_point():
        x = x.to(torch.float64)
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            raise ValueError(f"x must be finite, found {x[~finite][0].item()!r}")
        # x = mantissa * 2**exponent with |mantissa| in [0.5, 1) holding 53 bits (subnormals too),
        # so mantissa * 2**53 is an exact integer.
        mantissa, exponent = torch.frexp(x)
        raw = (mantissa * 2.0**53).to(torch.int64)
        exponent = exponent.to(torch.int64) - 53
    else:
        raw, exponent = x.to(torch.int64), torch.zeros((), dtype=torch.int64)
    frac = max(-_SHIFT_LIMIT, min(_SHIFT_LIMIT, fmt.frac))  # exact: see _SHIFT_LIMIT
    shift = (-(exponent + frac)).broadcast_to(raw.shape)
    codes, overflowed = _rescale(raw, shift, fmt, rounding, overflow, random)
    return (codes, overflowed) if return_saturated else codes


def requantize(
    raw: torch.Tensor,
    src: FixedFormat,
    dst: FixedFormat,
    rounding: Rounding | str = Rounding.HALF_EVEN,
    overflow: Overflow | str = Overflow.SATURATE,
    *,
    key: StochasticKey | None = None,
    index: torch.Tensor | None = None,
    return_saturated: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Convert codes of ``src`` to codes of ``dst``: shift, round, then handle overflow.

    Parameters
    ----------
    raw : Tensor
        Integer codes of ``src``; all must lie in its code range.
    src, dst : FixedFormat
        Source and destination formats.
    rounding, overflow, key, index, return_saturated
        As for :func:`quantize`.

    Returns
    -------
    Tensor or tuple of Tensor
        int64 codes of ``dst`` shaped like ``raw``, and the overflow mask if ``return_saturated``.
    """
    src, dst = _check_format(src, "Source format"), _check_format(dst, "Destination format")
    rounding, overflow = as_rounding(rounding), as_overflow(overflow)
    raw = _as_int64(raw, "Raw")
    bad = (raw < src.min_code) | (raw > src.max_code)
    if bool(bad.any()):
        raise ValueError(
            f"Raw has {int(bad.sum())} codes outside the range [{src.min_code}, {src.max_code}] "
            f"of {src}; the first is {raw[bad][0].item()}"
        )
    random = _stochastic_words(rounding, key, index, raw.shape, raw.device)
    shift = _as_shift(src.frac - dst.frac).broadcast_to(raw.shape)
    codes, overflowed = _rescale(raw, shift, dst, rounding, overflow, random)
    return (codes, overflowed) if return_saturated else codes


def to_float(raw: torch.Tensor, fmt: FixedFormat) -> torch.Tensor:
    """Values of codes of ``fmt`` as float64.

    Parameters
    ----------
    raw : Tensor
        Integer codes of ``fmt``.
    fmt : FixedFormat
        Their format.

    Returns
    -------
    Tensor
        float64 tensor ``raw * 2**-fmt.frac``: exact whenever ``width <= 53`` and the value is
        representable in float64, otherwise correctly rounded (from the nearest float64 of ``raw``
        when ``width > 53``).
    """
    fmt = _check_format(fmt, "Format")
    value = _as_int64(raw, "Raw").to(torch.float64)
    # Two power-of-two factors, the first exact, so that a tiny or huge 2**-frac whose product is
    # still representable is not lost to underflow or overflow of the factor itself.
    first = max(-1022, min(1023, -fmt.frac))
    second = max(-1100, min(1023, -fmt.frac - first))
    return value * math.ldexp(1.0, first) * math.ldexp(1.0, second)
