"""The compiled conv kernels (golden/conv_kernels.py) against the numpy path of
golden/fixed_arith.py.

A conv stage's forward, backward and update run once compiled and once in numpy (the stage's
``kernel`` tables removed) on the same random codes, in every rounding and overflow mode, each
mode one config of a run (and a run of one config with mixed modes): the output codes, the
ReLU masks, the max-pooling choices, the errors (at the convolution's output, along the
residual and to the previous stage), the new weights and velocities, Online Normalization's
state and the overflow counts must be exactly equal. Group norm and Online Normalization run
compiled too, unless a projection or a global average is in their stage. The formats are
narrow and the codes wide, so that every mode rounds and overflows."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_fixed_conv import conv_raw

from golden.fixed_arith import FixedArithmetic
from pbhw.core.config import from_dict
from pbhw.core.plan import derive_plan
from pbhw.core.weights import initial_weights

ROUNDINGS = ("floor", "toward_zero", "half_up", "half_even", "stochastic")
OVERFLOWS = ("wrap", "saturate")
ALL_MODES = [f"{r}-{o}" for r, o in itertools.product(ROUNDINGS, OVERFLOWS)]


def plans_of(net: str, cases: list[str], bias: bool) -> list:
    return [derive_plan(from_dict(conv_raw(net, case=case, bias=bias))) for case in cases]


def run(plans: list, compiled: bool) -> tuple[list[np.ndarray], dict, int]:
    """Two steps of every conv stage's forward, backward and update on random codes: every
    array they give, the overflow counts and the stages the kernels ran."""
    arith = FixedArithmetic(plans)
    kernel_stages = 0
    for ctx in arith._stage:
        if ctx.get("kernel") is not None:
            kernel_stages += 1
            if not compiled:
                ctx["kernel"] = None
    rng = np.random.default_rng(11)
    c = len(plans)
    stages = [st for st in plans[0].stages if st.conv]
    states = []
    for st, params in zip(stages, initial_weights(plans[0]), strict=False):
        s = arith.init_conv_state(st, params)
        s.w = rng.integers(-40, 40, s.w.shape, dtype=np.int64)
        s.v = rng.integers(-90, 90, s.v.shape, dtype=np.int64)
        if s.w_prev is not None:
            s.w_prev = rng.integers(-40, 40, s.w.shape, dtype=np.int64)
        online = getattr(s, "online", None)
        if online is not None:  # a state far from its start, so that every term counts
            m = online["M"].shape
            online["M"] = rng.integers(-(1 << 14), 1 << 14, m, dtype=np.int64)
            online["V"] = rng.integers(0, 1 << 20, m, dtype=np.int64)
            online["P"] = rng.integers(-(1 << 24), 1 << 24, m, dtype=np.int64)
            online["U"] = rng.integers(-(1 << 18), 1 << 18, m, dtype=np.int64)
        states.append(s)
    seen: list[np.ndarray] = []
    for step in (0, 3):
        arith.begin_step(step)
        x = rng.integers(-300, 300, (c, stages[0].n_in), dtype=np.int64)
        inputs, outputs, kept = [], [], []
        for st, s in zip(stages, states, strict=True):
            residual = outputs[-st.spec.residual] if st.spec.residual else None
            w, _ = arith.conv_predicted(st, s)
            inputs.append(x)
            x, k = arith.conv_forward(st, w, x, residual, s)
            outputs.append(x)
            kept.append(k)
            seen += [x, *(a for a in (k.mask, k.choice) if a is not None)]
        for i in reversed(range(len(stages))):
            st, s = stages[i], states[i]
            error = rng.integers(-500, 500, outputs[i].shape, dtype=np.int64)
            pending, error_in, residual_error = arith.conv_backward(
                st, s.w, inputs[i], kept[i], error, s
            )
            seen += [pending[0], *(a for a in (error_in, residual_error) if a is not None)]
            arith.conv_update(st, s, pending)
            seen += [s.w, s.v]
        seen += [a for s in states for a in (getattr(s, "online", None) or {}).values()]
    return seen, arith.saturation_counts(), kernel_stages


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "net, cases",
    [
        ("1d", ALL_MODES),
        ("2d", ALL_MODES),
        ("2d-global", ALL_MODES),
        ("1d", ["mixed1"]),
        ("2d", ["mixed-per-layer"]),
        ("1d-norm", ALL_MODES),
        ("2d-norm", ALL_MODES),
        ("1d-online", ALL_MODES),
        ("2d-online", ALL_MODES),
        ("2d-online", ["mixed-per-layer"]),
    ],
    ids=[
        "1d-every-mode",
        "2d-every-mode",
        "2d-global-every-mode",
        "1d-mixed",
        "2d-mixed",
        "1d-norm-every-mode",
        "2d-norm-every-mode",
        "1d-online-every-mode",
        "2d-online-every-mode",
        "2d-online-mixed",
    ],
)
def test_conv_kernels_equal_numpy(net, cases, bias):
    plans = plans_of(net, cases, bias)
    (numpy_codes, numpy_counts, stages), (kernel_codes, kernel_counts, _) = (
        run(plans, compiled) for compiled in (False, True)
    )
    assert stages >= 2  # the kernels ran (a global average's stage runs in numpy)
    assert len(numpy_codes) == len(kernel_codes)
    for a, b in zip(numpy_codes, kernel_codes, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert kernel_counts == numpy_counts
    if "norm" in net or "online" in net:  # the norm's roles were counted, and some overflowed
        roles = {k.split()[-1] for k in numpy_counts}
        assert {"norm", "normalized", "norm_error", "norm_backward"} <= roles, roles
        assert any(sum(n) for k, n in numpy_counts.items() if k.startswith("stage 1 norm"))
    elif len(cases) > 1:  # every role of every stage overflows in some mode (an average of
        # ReLU outputs cannot)
        assert all(sum(n) > 0 for k, n in numpy_counts.items() if "pool" not in k), numpy_counts
