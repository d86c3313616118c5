"""Tests for pbhw.core.fixed against an independent exact reference on Python ints and Fractions."""

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pbhw.core.fixed import (
    THREEFRY_ROUNDS,
    FixedFormat,
    Overflow,
    Rounding,
    StochasticKey,
    as_overflow,
    as_rounding,
    overflow_to,
    quantize,
    random_words,
    requantize,
    shift_round,
    threefry2x32,
    to_float,
)

DETERMINISTIC = [r for r in Rounding if r is not Rounding.STOCHASTIC]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
KEY = StochasticKey(seed=0x1234_5678, stream=7, step=42)


# Reference model: exact rational arithmetic, written from the definitions


def ref_range(width, signed):
    return (-(2 ** (width - 1)), 2 ** (width - 1) - 1) if signed else (0, 2**width - 1)


def ref_round(q: Fraction, rounding: Rounding) -> int:
    down = math.floor(q)
    rest = q - down
    if rounding is Rounding.FLOOR:
        return down
    if rounding is Rounding.TOWARD_ZERO:
        return down if q >= 0 or rest == 0 else down + 1
    if rounding is Rounding.HALF_UP:
        return down + (rest >= Fraction(1, 2))
    if rounding is Rounding.HALF_EVEN:
        return down + (rest > Fraction(1, 2) or (rest == Fraction(1, 2) and down % 2 == 1))
    raise AssertionError(rounding)


def ref_overflow(code, width, signed, overflow):
    lo, hi = ref_range(width, signed)
    out = not lo <= code <= hi
    if overflow is Overflow.SATURATE:
        return min(max(code, lo), hi), out
    return (code - lo) % 2**width + lo, out


def py_threefry2x32(k0, k1, c0, c1, rounds):
    mask = 2**32 - 1
    rotations = [13, 15, 26, 6, 17, 29, 16, 24]
    ks = [k0, k1, 0x1BD11BDA ^ k0 ^ k1]
    x0, x1 = (c0 + ks[0]) & mask, (c1 + ks[1]) & mask
    for i in range(rounds):
        r = rotations[i % 8]
        x0 = (x0 + x1) & mask
        x1 = ((x1 << r) | (x1 >> (32 - r))) & mask
        x1 ^= x0
        if i % 4 == 3:
            j = (i + 1) // 4
            x0 = (x0 + ks[j % 3]) & mask
            x1 = (x1 + ks[(j + 1) % 3] + j) & mask
    return x0, x1


def ref_stochastic(q: Fraction, key: StochasticKey, index: int) -> int:
    down = math.floor(q)
    top32 = math.floor((q - down) * 2**32)
    word = py_threefry2x32(key.seed, key.stream, key.step, index, THREEFRY_ROUNDS)[0]
    return down + (word < top32)


def ref_value_code(q: Fraction, fmt, rounding, overflow, key=None, index=0):
    """Code of fmt for the exact rational q (already scaled to units of 2**-frac)."""
    if rounding is Rounding.STOCHASTIC:
        code = ref_stochastic(q, key, index)
    else:
        code = ref_round(q, rounding)
    return ref_overflow(code, fmt.width, fmt.signed, overflow)


def ref_quantize(values, fmt, rounding, overflow, key=None):
    scale = Fraction(2) ** fmt.frac
    results = [
        ref_value_code(Fraction(v) * scale, fmt, rounding, overflow, key, i)
        for i, v in enumerate(values)
    ]
    return [c for c, _ in results], [o for _, o in results]


def ref_requantize(codes, src, dst, rounding, overflow, key=None):
    scale = Fraction(2) ** (dst.frac - src.frac)
    results = [
        ref_value_code(c * scale, dst, rounding, overflow, key, i) for i, c in enumerate(codes)
    ]
    return [c for c, _ in results], [o for _, o in results]


# Strategies


@st.composite
def formats(draw, max_width=62):
    signed = draw(st.booleans())
    width = draw(st.integers(2 if signed else 1, max_width))
    return FixedFormat(width, draw(st.integers(-20, 80)), signed)


@st.composite
def values_near(draw, fmt):
    """A finite float, biased towards ties, grid points and range ends of fmt."""
    lo, hi = ref_range(fmt.width, fmt.signed)
    kind = draw(st.sampled_from(["any", "tie", "grid", "edge", "small"]))
    if kind == "any":
        return draw(st.floats(allow_nan=False, allow_infinity=False))
    if kind == "small":
        return draw(st.floats(-1e-300, 1e-300, allow_subnormal=True))
    code = draw(st.integers(max(lo - 3, -(2**52)), min(hi + 3, 2**52)))
    if kind == "tie":
        return math.ldexp(2 * code + 1, -fmt.frac - 1)
    if kind == "grid":
        return math.ldexp(code, -fmt.frac)
    edge = draw(st.sampled_from([lo, hi, lo - 1, hi + 1]))
    offset = draw(st.sampled_from([-0.5, -0.25, 0.0, 0.25, 0.5]))
    return (edge + offset) * fmt.resolution


@st.composite
def format_and_values(draw):
    fmt = draw(formats())
    return fmt, draw(st.lists(values_near(fmt), min_size=1, max_size=12))


@st.composite
def formats_and_codes(draw):
    src = draw(formats())
    same_frac = formats().map(lambda f: FixedFormat(f.width, src.frac, f.signed))  # shift 0
    dst = draw(st.one_of(formats(), same_frac))
    lo, hi = ref_range(src.width, src.signed)
    code = st.one_of(
        st.integers(lo, hi),
        st.sampled_from([lo, hi, 0, lo + 1, hi - 1]).map(lambda c: min(max(c, lo), hi)),
    )
    return src, dst, draw(st.lists(code, min_size=1, max_size=12))


@st.composite
def raws_and_shifts(draw):
    """Pairs (raw, shift): any int64 with right shifts up to 2100, or a left shift that fits."""
    edge = st.sampled_from([INT64_MIN, INT64_MAX, -(2**62), 2**62, -1, 0, 1, 3, -3])
    raw = draw(st.one_of(st.integers(INT64_MIN, INT64_MAX), edge, st.integers(-1000, 1000)))
    shift = draw(st.one_of(st.integers(0, 70), st.sampled_from([62, 63, 64, 65, 2000, 2100])))
    if draw(st.booleans()) and raw != 0:
        room = 63 - abs(raw).bit_length() - 1
        if room > 0:
            shift = -draw(st.integers(1, room))
    return raw, shift


def codes(values):
    return torch.tensor(values, dtype=torch.int64)


# Modes


def test_modes_accept_members_and_string_values():
    for rounding in Rounding:
        assert as_rounding(rounding) is rounding
        assert as_rounding(rounding.value) is rounding
    for overflow in Overflow:
        assert as_overflow(overflow) is overflow
        assert as_overflow(overflow.value) is overflow


def test_unknown_mode_string_lists_allowed_values():
    with pytest.raises(ValueError, match="'floor', 'toward_zero', 'half_up', 'half_even'"):
        as_rounding("nearest")
    with pytest.raises(ValueError, match=r"'wrap', 'saturate', not 'clip'"):
        as_overflow("clip")
    with pytest.raises(ValueError, match="'nearest'"):
        quantize([1.0], FixedFormat(8, 0), "nearest")


def test_mode_of_wrong_type_is_type_error():
    with pytest.raises(TypeError, match="not 3"):
        as_rounding(3)
    with pytest.raises(TypeError, match="Overflow"):
        as_overflow(Rounding.FLOOR)


def test_string_modes_give_same_codes_as_members():
    x = [2.5, -3.75, 100.0]
    fmt = FixedFormat(6, 1)
    assert torch.equal(
        quantize(x, fmt, "half_up", "wrap"), quantize(x, fmt, Rounding.HALF_UP, Overflow.WRAP)
    )


# FixedFormat


def test_format_codes_values_and_name():
    s = FixedFormat(16, 10)
    assert (s.min_code, s.max_code) == (-32768, 32767)
    assert s.resolution == 2**-10
    assert (s.min_value, s.max_value) == (-32.0, 32767 / 1024)
    assert str(s) == "s16.10"
    u = FixedFormat(8, 8, signed=False)
    assert (u.min_code, u.max_code) == (0, 255)
    assert (u.min_value, u.max_value) == (0.0, 255 / 256)
    assert str(u) == "u8.8"
    assert FixedFormat(1, 0, signed=False).max_code == 1
    assert FixedFormat(62, 0).max_code == 2**61 - 1
    assert FixedFormat(4, -3).resolution == 8.0
    assert str(FixedFormat(4, -3)) == "s4.-3"


def test_format_is_frozen_and_hashable():
    fmt = FixedFormat(8, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.width = 9
    assert {fmt: 1}[FixedFormat(8, 4, True)] == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"width": 0, "frac": 0}, ValueError, r"Width must be a positive integer, not 0"),
        ({"width": -4, "frac": 0}, ValueError, r"Width must be a positive integer, not -4"),
        ({"width": 1, "frac": 0}, ValueError, r"signed format must be at least 2, not 1"),
        ({"width": True, "frac": 0}, TypeError, r"Width must be a positive integer, not True"),
        ({"width": 8.0, "frac": 0}, TypeError, r"Width must be a positive integer, not 8.0"),
        ({"width": 63, "frac": 0}, ValueError, r"Width must be at most 62, not 63"),
        ({"width": 8, "frac": 0.5}, TypeError, r"Fraction bits must be an integer, not 0.5"),
        ({"width": 8, "frac": False}, TypeError, r"Fraction bits must be an integer"),
        ({"width": 8, "frac": 0, "signed": 1}, TypeError, r"Signedness must be a bool, not 1"),
    ],
)
def test_format_validation(kwargs, error, message):
    with pytest.raises(error, match=message):
        FixedFormat(**kwargs)


def test_unsigned_width_one_is_allowed():
    assert FixedFormat(1, 0, signed=False).min_code == 0


# quantize


TIES = [2.5, -2.5, 0.5, -0.5, 1.5, -1.5]
TIE_CODES = {
    Rounding.FLOOR: [2, -3, 0, -1, 1, -2],
    Rounding.TOWARD_ZERO: [2, -2, 0, 0, 1, -1],
    Rounding.HALF_UP: [3, -2, 1, 0, 2, -1],
    Rounding.HALF_EVEN: [2, -2, 0, 0, 2, -2],
}


@pytest.mark.parametrize("rounding", DETERMINISTIC)
def test_quantize_ties_at_frac_zero(rounding):
    assert quantize(TIES, FixedFormat(8, 0), rounding).tolist() == TIE_CODES[rounding]


@pytest.mark.parametrize("rounding", DETERMINISTIC)
@pytest.mark.parametrize("overflow", list(Overflow))
@settings(max_examples=100, deadline=None)
@given(case=format_and_values())
def test_quantize_matches_exact_reference(rounding, overflow, case):
    fmt, values = case
    got, mask = quantize(values, fmt, rounding, overflow, return_saturated=True)
    want, want_mask = ref_quantize(values, fmt, rounding, overflow)
    assert got.dtype == torch.int64
    assert got.tolist() == want
    assert mask.tolist() == want_mask


def test_quantize_huge_values_saturate_or_wrap_exactly():
    fmt = FixedFormat(8, 4)
    assert quantize([1e300, -1e300], fmt).tolist() == [127, -128]
    assert quantize([1e300, -1e300], fmt, overflow="wrap").tolist() == [0, 0]
    # (2**52 + 5) * 4 mod 256 = 20: wrapping a left shift keeps the exact low bits.
    assert quantize(float(2**52 + 5), FixedFormat(8, 2), overflow="wrap").item() == 20
    codes_, mask = quantize([1e300, 1.0], fmt, return_saturated=True)
    assert mask.tolist() == [True, False] and int(mask.sum()) == 1


def test_quantize_subnormals_and_negative_zero():
    tiny = 5e-324  # 2**-1074
    assert quantize([tiny, -tiny], FixedFormat(8, 1074)).tolist() == [1, -1]
    assert quantize(tiny, FixedFormat(8, 1073), "half_even").item() == 0  # exact tie
    assert quantize(tiny, FixedFormat(8, 1073), "half_up").item() == 1
    assert quantize(-tiny, FixedFormat(8, 0), "floor").item() == -1
    assert quantize(-0.0, FixedFormat(8, 4)).item() == 0


def test_quantize_never_rounds_through_float32():
    # 0.1 as float64 lies above 3277/32768 + 1/2 LSB by less than float32 can tell.
    x = 3277.5 / 32768 + 2**-40
    assert quantize(x, FixedFormat(16, 15), "half_even").item() == 3278
    assert quantize(x - 2**-39, FixedFormat(16, 15), "half_even").item() == 3277


def test_quantize_accepts_array_likes_and_keeps_shape():
    fmt = FixedFormat(8, 2)
    want = [[1, 2], [-3, 4]]
    inputs = [
        [[0.25, 0.5], [-0.75, 1.0]],
        np.array([[0.25, 0.5], [-0.75, 1.0]], dtype=np.float32),
        np.array([[0.25, 0.5], [-0.75, 1.0]])[:, ::-1][:, ::-1],
        torch.tensor([[0.25, 0.5], [-0.75, 1.0]], dtype=torch.float32, requires_grad=True),
    ]
    for x in inputs:
        assert quantize(x, fmt).tolist() == want
    assert quantize(0.5, fmt).shape == ()
    assert quantize(torch.empty(0, 3), fmt).shape == (0, 3)


def test_quantize_integers_exactly():
    big = 2**53 + 1  # not a float64
    assert quantize(torch.tensor([big]), FixedFormat(60, 1)).tolist() == [2 * big]
    assert quantize([3, -3], FixedFormat(8, -1), "half_even").tolist() == [2, -2]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_quantize_rejects_non_finite(bad):
    with pytest.raises(ValueError, match=f"x must be finite, found {bad!r}"):
        quantize([1.0, bad], FixedFormat(8, 0))


def test_quantize_rejects_wrong_types():
    with pytest.raises(TypeError, match="FixedFormat"):
        quantize([1.0], (8, 0))
    with pytest.raises(TypeError, match="real numbers"):
        quantize(torch.tensor([1j]), FixedFormat(8, 0))


# requantize, shift_round, overflow_to


@pytest.mark.parametrize("rounding", DETERMINISTIC)
@pytest.mark.parametrize("overflow", list(Overflow))
@settings(max_examples=100, deadline=None)
@given(case=formats_and_codes())
def test_requantize_matches_exact_reference(rounding, overflow, case):
    src, dst, raw = case
    got, mask = requantize(codes(raw), src, dst, rounding, overflow, return_saturated=True)
    want, want_mask = ref_requantize(raw, src, dst, rounding, overflow)
    assert got.tolist() == want
    assert mask.tolist() == want_mask


@pytest.mark.parametrize("overflow", list(Overflow))
def test_requantize_large_left_shift_does_not_overflow(overflow):
    src, dst = FixedFormat(62, -20), FixedFormat(40, 80, signed=False)
    raw = [2**61 - 1, -(2**61), 1, 0, -1]
    got, mask = requantize(codes(raw), src, dst, "floor", overflow, return_saturated=True)
    want, want_mask = ref_requantize(raw, src, dst, Rounding.FLOOR, overflow)
    assert (got.tolist(), mask.tolist()) == (want, want_mask)


def test_requantize_rejects_codes_outside_source_range():
    with pytest.raises(ValueError, match=r"2 codes outside the range \[-128, 127\] of s8.4.*300"):
        requantize(codes([1, 300, -129]), FixedFormat(8, 4), FixedFormat(8, 2))
    with pytest.raises(TypeError, match="integer tensor"):
        requantize(torch.tensor([1.0]), FixedFormat(8, 4), FixedFormat(8, 2))


@pytest.mark.parametrize("rounding", DETERMINISTIC)
@settings(max_examples=120, deadline=None)
@given(pairs=st.lists(raws_and_shifts(), min_size=1, max_size=12))
def test_shift_round_per_element_shifts_match_reference(rounding, pairs):
    raw, shift = zip(*pairs, strict=True)
    got = shift_round(codes(raw), codes(shift), rounding)
    assert got.tolist() == [ref_round(Fraction(r) / Fraction(2) ** s, rounding) for r, s in pairs]


@pytest.mark.parametrize("rounding", DETERMINISTIC)
def test_shift_round_huge_shifts(rounding):
    raw = codes([INT64_MIN, INT64_MAX, -1, 1, 0])
    want = [-1, 0, -1, 0, 0] if rounding is Rounding.FLOOR else [0] * 5
    assert shift_round(raw, 2000, rounding).tolist() == want
    assert shift_round(raw, 10**30, rounding).tolist() == want


def test_shift_round_exact_halves_at_the_int64_limit():
    assert shift_round(codes([INT64_MIN]), 64, "floor").item() == -1
    assert shift_round(codes([INT64_MIN]), 64, "half_up").item() == 0
    assert shift_round(codes([2**62, -(2**62)]), 63, "half_up").tolist() == [1, 0]
    assert shift_round(codes([2**62, -(2**62)]), 63, "half_even").tolist() == [0, 0]
    assert shift_round(codes([3 * 2**61]), 62, "half_even").item() == 2


def test_shift_round_left_and_zero_shifts_are_exact():
    assert shift_round(codes([3, -3]), -4, "floor").tolist() == [48, -48]
    assert shift_round(codes([3, -3]), 0, "stochastic", random=codes([0])).tolist() == [3, -3]


def test_shift_round_rejects_bad_shift():
    with pytest.raises(TypeError, match="Shift must be an integer"):
        shift_round(codes([1]), 1.5, "floor")


@settings(max_examples=100, deadline=None)
@given(
    raw=st.lists(st.integers(INT64_MIN, INT64_MAX), min_size=1, max_size=12),
    fmt=formats(),
    overflow=st.sampled_from(list(Overflow)),
)
def test_overflow_to_matches_reference(raw, fmt, overflow):
    got, mask = overflow_to(codes(raw), fmt, overflow)
    want = [ref_overflow(r, fmt.width, fmt.signed, overflow) for r in raw]
    assert got.tolist() == [c for c, _ in want]
    assert mask.tolist() == [o for _, o in want]


@settings(max_examples=100, deadline=None)
@given(case=formats_and_codes())
def test_to_float_is_exact_and_round_trips(case):
    fmt, _, raw = case
    values = to_float(codes(raw), fmt)
    assert values.dtype == torch.float64
    if fmt.width <= 53:
        assert [Fraction(v) for v in values.tolist()] == [
            Fraction(r) / Fraction(2) ** fmt.frac for r in raw
        ]
        assert quantize(values, fmt, "floor").tolist() == raw


def test_to_float_extreme_fractions():
    assert to_float(codes([1, -3]), FixedFormat(8, 1074)).tolist() == [5e-324, -1.5e-323]
    assert to_float(codes([1]), FixedFormat(8, -1023)).item() == 2.0**1023
    assert to_float(codes([2]), FixedFormat(8, -1023)).item() == math.inf


# Random words

M32 = 0xFFFF_FFFF
# Random123 kat_vectors: (key, counter) -> output, for 20 and 13 rounds.
THREEFRY_KATS = [
    (20, (0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
    (20, (M32, M32), (M32, M32), (0x1CB996FC, 0xBB002BE7)),
    (20, (0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
    (13, (0, 0), (0, 0), (0x9D1C5EC6, 0x8BD50731)),
    (13, (M32, M32), (M32, M32), (0xFD36D048, 0x2D17272C)),
    (13, (0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xBA3E4725, 0xF27D669E)),
]


@pytest.mark.parametrize(("rounds", "key", "counter", "want"), THREEFRY_KATS)
def test_threefry_known_answers(rounds, key, counter, want):
    x0, x1 = threefry2x32(*key, *counter, rounds=rounds)
    assert (x0.item(), x1.item()) == want
    assert py_threefry2x32(*key, *counter, rounds) == want


def test_production_rounds():
    assert THREEFRY_ROUNDS == 13


@settings(max_examples=30, deadline=None)
@given(words=st.lists(st.tuples(*[st.integers(0, M32)] * 4), min_size=1, max_size=8))
def test_threefry_vectorised_matches_scalar_reference(words):
    k0, k1, c0, c1 = (codes(list(w)) for w in zip(*words, strict=True))
    x0, x1 = threefry2x32(k0, k1, c0, c1)
    assert list(zip(x0.tolist(), x1.tolist(), strict=True)) == [
        py_threefry2x32(*w, THREEFRY_ROUNDS) for w in words
    ]


def test_threefry_broadcasts_and_validates():
    x0, _ = threefry2x32(1, 2, codes([[3], [4]]), codes([5, 6, 7]))
    assert x0.shape == (2, 3)
    assert x0[1, 2].item() == py_threefry2x32(1, 2, 4, 7, THREEFRY_ROUNDS)[0]
    with pytest.raises(ValueError, match=r"c1 must hold values in \[0, 2\*\*32\)"):
        threefry2x32(0, 0, 0, codes([2**32]))
    with pytest.raises(ValueError, match="k0"):
        threefry2x32(-1, 0, 0, 0)


def test_random_words_are_first_threefry_word_of_seed_stream_step_index():
    index = codes([0, 1, 2**32 - 1])
    assert random_words(KEY, index).tolist() == [
        py_threefry2x32(KEY.seed, KEY.stream, KEY.step, i, THREEFRY_ROUNDS)[0] for i in index
    ]


def test_random_words_differ_across_seed_stream_step_and_index():
    index = torch.arange(4096)
    base = random_words(KEY, index)
    assert torch.equal(base, random_words(StochasticKey(KEY.seed, KEY.stream, KEY.step), index))
    assert base.unique().numel() > 4090
    for other in [
        StochasticKey(KEY.seed + 1, KEY.stream, KEY.step),
        StochasticKey(KEY.seed, KEY.stream + 1, KEY.step),
        StochasticKey(KEY.seed, KEY.stream, KEY.step + 1),
    ]:
        assert (random_words(other, index) == base).float().mean() < 0.01
    assert (random_words(KEY, index + 4096) == base).float().mean() < 0.01


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"seed": -1, "stream": 0, "step": 0}, ValueError),
        ({"seed": 0, "stream": 2**32, "step": 0}, ValueError),
        ({"seed": 0, "stream": 0, "step": 1.0}, TypeError),
        ({"seed": True, "stream": 0, "step": 0}, TypeError),
    ],
)
def test_stochastic_key_validation(kwargs, error):
    with pytest.raises(error, match=r"must be an integer in \[0, 2\*\*32\)"):
        StochasticKey(**kwargs)


# Stochastic rounding


def test_stochastic_rule_on_hand_computed_elements():
    # requantize from frac 40, 32 and 5 to frac 0: F is the top 32 discarded bits, zero-padded.
    cases = [
        (FixedFormat(50, 40), (7 << 40) | 0xABCDEF1234, 7, 0xABCDEF12),
        (FixedFormat(50, 40), -(1 << 40) + 0x0000000FFF, -1, 0x00000000),
        (FixedFormat(50, 32), (5 << 32) | 0x80000001, 5, 0x80000001),
        (FixedFormat(20, 5), (-3 << 5) | 0b10110, -3, 0b10110 << 27),
    ]
    for src, raw, floor, top32 in cases:
        for index in range(8):
            word = py_threefry2x32(KEY.seed, KEY.stream, KEY.step, index, THREEFRY_ROUNDS)[0]
            got = requantize(
                codes([raw]), src, FixedFormat(16, 0), "stochastic", key=KEY, index=codes([index])
            )
            assert got.item() == floor + (word < top32)


@pytest.mark.parametrize("overflow", list(Overflow))
@settings(max_examples=60, deadline=None)
@given(case=format_and_values())
def test_stochastic_quantize_matches_reference(overflow, case):
    fmt, values = case
    got, mask = quantize(values, fmt, "stochastic", overflow, key=KEY, return_saturated=True)
    want, want_mask = ref_quantize(values, fmt, Rounding.STOCHASTIC, overflow, key=KEY)
    assert got.tolist() == want
    assert mask.tolist() == want_mask


@settings(max_examples=60, deadline=None)
@given(case=formats_and_codes())
def test_stochastic_requantize_matches_reference_and_stays_within_one_step(case):
    src, dst, raw = case
    got = requantize(codes(raw), src, dst, "stochastic", "wrap", key=KEY)
    want, _ = ref_requantize(raw, src, dst, Rounding.STOCHASTIC, Overflow.WRAP, key=KEY)
    assert got.tolist() == want
    wide = FixedFormat(62, dst.frac)  # no overflow: compare the rounding itself with the floor
    if src.frac - dst.frac >= 0:
        up = requantize(codes(raw), src, wide, "stochastic", key=KEY) - requantize(
            codes(raw), src, wide, "floor"
        )
        assert set(up.tolist()) <= {0, 1}


def test_stochastic_is_reproducible_and_uses_row_major_index_by_default():
    x = torch.linspace(-3, 3, 60, dtype=torch.float64).reshape(6, 10) / 7
    fmt = FixedFormat(8, 3)
    first = quantize(x, fmt, "stochastic", key=KEY)
    assert torch.equal(first, quantize(x, fmt, "stochastic", key=KEY))
    explicit = quantize(x, fmt, "stochastic", key=KEY, index=torch.arange(60).reshape(6, 10))
    assert torch.equal(first, explicit)
    other = quantize(x, fmt, "stochastic", key=StochasticKey(KEY.seed, KEY.stream, KEY.step + 1))
    assert not torch.equal(first, other)


def test_stochastic_rounding_is_unbiased():
    n = 200_000
    p = Fraction(307, 1024)  # discarded fraction 0.2998..., so F / 2**32 == p exactly
    raw = torch.randint(-500, 500, (n,), generator=torch.Generator().manual_seed(0)) * 1024 + 307
    got = requantize(raw, FixedFormat(24, 10), FixedFormat(16, 0), "stochastic", key=KEY)
    error = got.to(torch.float64) - raw.to(torch.float64) / 1024
    assert abs(error.mean().item()) < 5 * math.sqrt(float(p * (1 - p)) / n)
    assert set((got - (raw >> 10)).unique().tolist()) == {0, 1}


def test_stochastic_quantize_of_constant_has_the_right_mean():
    n = 200_000
    got = quantize(torch.full((n,), 0.3), FixedFormat(8, 0), "stochastic", key=KEY)
    assert set(got.unique().tolist()) == {0, 1}
    assert abs(got.double().mean().item() - 0.3) < 5 * math.sqrt(0.3 * 0.7 / n)


def test_stochastic_requires_key_or_words():
    with pytest.raises(ValueError, match="key is required for stochastic rounding"):
        quantize([0.3], FixedFormat(8, 0), "stochastic")
    with pytest.raises(ValueError, match="key is required for stochastic rounding"):
        requantize(codes([3]), FixedFormat(8, 2), FixedFormat(8, 0), "stochastic")
    with pytest.raises(ValueError, match="Random words are required"):
        shift_round(codes([3]), 2, "stochastic")
    # A key with another rounding mode is ignored.
    assert quantize([0.3], FixedFormat(8, 0), "half_even", key=KEY).tolist() == [0]


def test_stochastic_index_validation():
    with pytest.raises(ValueError, match="Index must have the shape"):
        quantize([0.3, 0.4], FixedFormat(8, 0), "stochastic", key=KEY, index=codes([0]))
    with pytest.raises(ValueError, match="Index must hold values"):
        quantize([0.3], FixedFormat(8, 0), "stochastic", key=KEY, index=codes([-1]))
    with pytest.raises(ValueError, match="do not broadcast"):
        shift_round(codes([3, 4]), 2, "stochastic", random=codes([1, 2, 3]))
