"""The compiled kernels (golden/kernels.py) against the numpy path of golden/fixed_arith.py.

The joined prediction and update of every stage (``_Bank``), and a dense stage's forward, loss,
backward, gradient products and evaluation, run once compiled and once in numpy on the same
random codes, in every rounding and overflow mode, several configs at once (each its own modes
and formats): the codes and the overflow counts must be exactly equal. The formats are narrow
and the codes wide enough that every mode overflows and rounds."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from golden.fixed_arith import FixedArithmetic, FixedState, threefry_words
from golden.kernels import OVERFLOW_CODES, ROUNDING_CODES, quantize_floats, threefry_word
from pbhw.core.config import RoleFormat, from_dict
from pbhw.core.fixed import FixedFormat, Overflow, Rounding, quantize
from pbhw.core.plan import derive_plan

ROUNDINGS = ("floor", "toward_zero", "half_up", "half_even", "stochastic")
OVERFLOWS = ("wrap", "saturate")
LAYERS = [6, 7, 5, 3]


def raw(
    rounding: str,
    overflow: str,
    prediction: str,
    width: int,
    loss: str = "mse",
    bias: bool = True,
) -> dict:
    """One config: every data role in ``rounding``/``overflow``, the weight ``width`` bits."""

    def fmt(w: int, frac: int, modes: tuple[str, str]) -> dict:
        return {
            "width": w,
            "frac": frac,
            "signed": True,
            "rounding": modes[0],
            "overflow": modes[1],
        }

    modes = (rounding, overflow)
    coefficient = ("half_even" if rounding == "stochastic" else rounding, "saturate")
    return {
        "seed": 11,
        "network": {"layers": LAYERS, "bias": bias, "loss": loss},
        "optimizer": {
            "lr": 0.2,
            "momentum": 0.8,
            "reference_batch": 1,
            "spike_compensation": True,
            "weight_prediction": prediction,
        },
        "formats": {
            "activation": fmt(8, 4, modes),
            "weight": fmt(width, width - 3, modes),
            "error": fmt(8, 5, modes),
            "gradient": fmt(6, 5, modes),
            "velocity": fmt(7, 5, modes),
            "coefficient": fmt(10, 8, coefficient),
        },
        "overrides": [
            {"layer": 2, "formats": {"velocity": fmt(9, 4, modes), "gradient": fmt(7, 3, modes)}}
        ],
        "train": {"arith": "fixed"},
    }


def arithmetic(
    prediction: str, compiled: bool, loss: str = "mse", bias: bool = True
) -> tuple[FixedArithmetic, list[FixedState]]:
    """Every rounding x overflow mode as one config each (two weight widths), attached to
    random states (the same for both paths)."""
    plans = [
        derive_plan(from_dict(raw(r, o, prediction, width, loss, bias)))
        for (r, o), width in itertools.product(itertools.product(ROUNDINGS, OVERFLOWS), (6, 9))
    ]
    arith = FixedArithmetic(plans)
    arith.compiled = compiled
    rng = np.random.default_rng(3)
    c = len(plans)
    states = []
    for n_in, n_out in zip(LAYERS[:-1], LAYERS[1:], strict=True):
        shape = (c, n_out, n_in + int(bias))
        w = rng.integers(-40, 40, shape, dtype=np.int64)
        state = FixedState(w, rng.integers(-70, 70, shape, dtype=np.int64))
        if prediction == "weight_difference":
            state.w_prev = rng.integers(-40, 40, shape, dtype=np.int64)
        states.append(state)
    arith.attach(states)
    arith._bank.compiled = compiled
    return arith, states


def stage_plans(arith: FixedArithmetic):
    return arith.plans[0].stages


@pytest.mark.parametrize("prediction", ["velocity", "weight_difference"])
def test_prediction_equals_numpy(prediction):
    results = []
    for compiled in (False, True):
        arith, states = arithmetic(prediction, compiled)
        out = []
        for step in (0, 1, 5):
            arith.begin_step(step)
            for stage, s in zip(stage_plans(arith), states, strict=True):
                out.append(arith.predicted(stage, s)[0].copy())
        results.append((out, arith.saturation_counts()))
    (numpy_codes, numpy_counts), (kernel_codes, kernel_counts) = results
    for a, b in zip(numpy_codes, kernel_codes, strict=True):
        assert np.array_equal(a, b)
    assert kernel_counts == numpy_counts
    assert all(sum(n) > 0 for key, n in numpy_counts.items())  # every stage overflows


@pytest.mark.parametrize("grad_joined", [True, False])
@pytest.mark.parametrize("prediction", ["velocity", "weight_difference", "none"])
def test_update_equals_numpy(prediction, grad_joined):
    """Three steps of the joined update, each followed by the predictions of the next step
    (made by the compiled update in the same pass) and of the step after (made anew): the
    gradients' exact products rounded in the kernel (``grad_joined``), or gradient codes
    rounded before (as conv stages give them)."""
    results = []
    for compiled in (False, True):
        arith, states = arithmetic(prediction, compiled)
        bank = arith._bank
        assert bank.grad is not None  # dense stages: the products wait in one buffer
        if not grad_joined:
            bank.grad = None
        rng = np.random.default_rng(5)
        seen = []
        for step in (0, 1, 2):
            arith.begin_step(step)
            products = rng.integers(-(1 << 12), 1 << 12, bank.product_array.shape)
            if grad_joined:
                bank.product_array[...] = products
                arith._pending = dict.fromkeys(range(len(states)))
            else:
                arith._pending = {
                    i: rng.integers(-300, 300, s.w.shape, dtype=np.int64)
                    for i, s in enumerate(states)
                }
            arith.end_step()
            # the next step's prediction (the compiled update made it ahead), then one two
            # steps on (made anew)
            for ahead in (1, 2):
                arith.begin_step(step + ahead)
                for stage, s in zip(stage_plans(arith), states, strict=True):
                    codes = arith.predicted(stage, s)[0]
                    seen.append(codes.copy())
        seen += [x for s in states for x in (s.w, s.v, s.w_prev) if x is not None]
        results.append((seen, arith.saturation_counts()))
    (numpy_codes, numpy_counts), (kernel_codes, kernel_counts) = results
    assert len(numpy_codes) == len(kernel_codes)
    for a, b in zip(numpy_codes, kernel_codes, strict=True):
        assert np.array_equal(a, b)
    assert kernel_counts == numpy_counts
    roles = ("velocity", "weight") + (("gradient",) if grad_joined else ())
    roles += ("prediction",) if prediction != "none" else ()
    for stage, role in itertools.product(range(1, len(LAYERS)), roles):
        # every mode overflows somewhere (wrap and saturate configs alike)
        assert sum(numpy_counts[f"stage {stage} {role}"]) > 0, (stage, role, numpy_counts)


@pytest.mark.parametrize("seed, stream, step", [(0, 0, 0), (5, 17, 3), (2**32 - 1, 45, 2**31)])
def test_threefry_word_equals_numpy(seed, stream, step):
    index = (np.arange(300, dtype=np.int64) * 7919) % 2**32
    expected = threefry_words(seed, stream, step, index)
    assert [threefry_word(seed, stream, step, int(n)) for n in index] == expected.tolist()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("loss", ["mse", "softmax_ce"])
def test_dense_step_equals_numpy(loss, bias):
    """A dense stage's forward (with its ReLU mask), the loss unit, the backward and the
    gradient products of every stage, compiled and in numpy, over two steps (stochastic
    rounding draws on the step) with random codes; then an evaluation of a random batch."""
    results = []
    for compiled in (False, True):
        arith, states = arithmetic("velocity", compiled, loss, bias)
        bank = arith._bank
        rng = np.random.default_rng(7)
        stages = stage_plans(arith)
        seen = []
        for step in (0, 3):
            arith.begin_step(step)
            h = rng.integers(-128, 128, (arith.configs, LAYERS[0]), dtype=np.int64)
            inputs, masks = [h], []
            for stage, s in zip(stages, states, strict=True):
                y, mask = arith.forward(stage, s.w, None, inputs[-1])
                seen += [y, mask if mask is None else np.asarray(mask, dtype=bool)]
                inputs.append(y)
                masks.append(mask)
            error, losses = arith.loss(inputs[-1], int(rng.integers(LAYERS[-1])))
            seen += [error, losses]
            for i in reversed(range(len(stages))):
                dz = arith.output_gradient(stages[i], error, masks[i])
                # wide errors: every product and sum is exercised, not only the clipped codes
                dz = dz * rng.integers(1, 9, dz.shape)
                arith.update(stages[i], states[i], dz, inputs[i])
                if i:
                    error = arith.backward(stages[i], states[i].w, dz)
                    seen.append(error)
            seen.append(bank.product_array.copy())
            arith._pending = {}  # the products are compared, not applied
        x = torch.from_numpy(rng.uniform(-9.0, 9.0, (11, LAYERS[0])))
        seen.append(arith.evaluate(stages, states, x))
        results.append((seen, arith.saturation_counts()))
    (numpy_codes, numpy_counts), (kernel_codes, kernel_counts) = results
    assert len(numpy_codes) == len(kernel_codes)
    for a, b in zip(numpy_codes, kernel_codes, strict=True):
        assert (a is None and b is None) or np.array_equal(a, b)
    assert kernel_counts == numpy_counts
    roles = {"activation": range(1, len(LAYERS)), "error": range(2, len(LAYERS))}
    if loss == "mse":  # softmax's probabilities minus the target always fit the error format
        roles["loss"] = [len(LAYERS) - 1]
    for role, where in roles.items():
        for stage in where:  # every mode overflows somewhere (wrap and saturate configs alike)
            assert sum(numpy_counts[f"stage {stage} {role}"]) > 0, (stage, role, numpy_counts)


@pytest.mark.parametrize("loss", ["mse", "softmax_ce"])
def test_float_loss_is_the_loss_of_the_values(loss):
    """The reported loss (float64, summed in element order) against the formula summed
    exactly (math.fsum): equal up to the rounding of a float sum of ten terms."""
    arith, _ = arithmetic("none", True, loss)
    rng = np.random.default_rng(2)
    y = rng.integers(-128, 128, (arith.configs, LAYERS[-1]), dtype=np.int64)
    label = 1
    got = arith.float_loss(y, label)
    for c, plan in enumerate(arith.plans):
        values = [
            math.ldexp(int(code), -plan.stages[-1].formats.activation.format.frac) for code in y[c]
        ]
        if loss == "mse":
            want = 0.5 * math.fsum((v - (k == label)) ** 2 for k, v in enumerate(values))
        else:
            top = max(values)
            want = math.log(math.fsum(math.exp(v - top) for v in values)) + top - values[label]
        assert got[c] == pytest.approx(want, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("rounding", [r for r in ROUNDINGS if r != "stochastic"])
@pytest.mark.parametrize("overflow", OVERFLOWS)
def test_quantize_floats_equals_quantize(rounding, overflow):
    """The compiled float quantizer against pbhw.core.fixed.quantize: ties, signs, subnormals,
    values far below a code and far above the range, in narrow and wide formats; and the
    values it leaves to that function (2^53 codes or more) are reported, not guessed."""
    rng = np.random.default_rng(5)
    for width, frac in [(4, 2), (8, 4), (8, -3), (16, 12), (33, 40), (62, 70), (62, 2)]:
        fmt = FixedFormat(width, frac, True)
        ties = (rng.integers(-300, 300, 200) + 0.5) * 2.0**-frac
        values = np.concatenate(
            [
                ties,
                rng.normal(0, 2.0 ** (min(width, 50) - frac - 2), 300),
                rng.normal(0, 2.0 ** (min(width, 48) - frac + 3), 100),  # overflows
                rng.normal(0, 2.0 ** (-frac - 4), 100),  # below a code
                [0.0, -0.0, 5e-324, -5e-324, 2.0**-1000, -(2.0**-frac) / 2, 2.0**-frac / 2],
            ]
        )
        role = RoleFormat(fmt, Rounding(rounding), Overflow(overflow))
        point = np.array(
            [0, fmt.min_code, fmt.max_code, 1 << width, 0]
            + [ROUNDING_CODES[role.rounding], OVERFLOW_CODES[role.overflow]],
            dtype=np.int64,
        )
        codes = np.empty(values.shape, dtype=np.int64)
        over = quantize_floats(values, frac, point, codes)
        expected, saturated = quantize(
            torch.from_numpy(values), fmt, rounding, overflow, return_saturated=True
        )
        assert over == int(saturated.sum())
        assert np.array_equal(codes, expected.numpy()), (width, frac)
        huge = np.array([1.0, 2.0**53 * 2.0**-frac], dtype=np.float64)
        assert quantize_floats(huge, frac, point, np.empty(2, dtype=np.int64)) == -1


def test_compiled_input_quantization_leaves_non_finite_inputs_to_quantize():
    arith, _ = arithmetic("velocity", compiled=True)
    x = torch.zeros(LAYERS[0], dtype=torch.float64)
    x[2] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        arith.encode_input(x)
