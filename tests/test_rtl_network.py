"""The generated network in Amaranth's simulator against the golden trace, bit for bit.

Every forward and error token, loss error, prediction, final weight and velocity code and
saturation counter is compared (``golden.compare``); ``sim/`` repeats the whole-pipeline check on
the Verilog under Verilator.
"""

import numpy as np
import pytest
from network_sim import simulate, trace_for
from pbhw_testing import make_config, raises_in_init

from golden.compare import first_mismatch
from pbhw.core.config import ConfigError
from rtl_gen.design import build_design, fixed_plan
from rtl_gen.lanes import auto_budget, auto_lanes, lane_dsp_cost
from rtl_gen.stage import OVERHEAD, Stage

NARROW_STOCHASTIC = {
    "activation": {"width": 8, "frac": 4, "rounding": "stochastic"},
    "weight": {"width": 8, "frac": 6, "rounding": "stochastic", "overflow": "wrap"},
    "error": {"width": 8, "frac": 6, "rounding": "stochastic"},
    "gradient": {"width": 8, "frac": 6, "rounding": "stochastic"},
    "velocity": {"width": 10, "frac": 6, "rounding": "stochastic"},
}
FAST_LR = {"lr": 0.5, "reference_batch": 1, "momentum": 0.5}

CASES = {
    # name: (config sections, lanes)
    "7-5-3 one lane": ({"network": {"layers": [7, 5, 3]}}, (1, 1)),
    "7-5-3 lanes not dividing": ({"network": {"layers": [7, 5, 3]}}, (3, 4)),
    "7-5-3 lanes wider than a row": ({"network": {"layers": [7, 5, 3]}}, (17, 16)),
    "7-5-3 every weight at once": ({"network": {"layers": [7, 5, 3]}}, (40, 18)),
    "stochastic weight difference wrap": (
        {
            "network": {"layers": [6, 4, 4, 3]},
            "optimizer": {**FAST_LR, "weight_prediction": "weight_difference"},
            "formats": NARROW_STOCHASTIC,
        },
        (5, 3, 7),
    ),
    "stochastic softmax no bias": (
        {
            "network": {"layers": [6, 4, 3], "bias": False, "loss": "softmax_ce"},
            "optimizer": FAST_LR,
            "formats": NARROW_STOCHASTIC,
        },
        (5, 3),
    ),
    "softmax no SC no prediction": (
        {
            "network": {"layers": [5, 6, 4], "loss": "softmax_ce"},
            "optimizer": {"spike_compensation": False, "weight_prediction": "none"},
        },
        (4, 7),
    ),
    "7-5-3 delay lines in block RAM": (
        {"network": {"layers": [7, 5, 3]}, "hardware": {"delay_lines": "block_ram"}},
        (3, 4),
    ),
    "stochastic weight difference in block RAM": (
        {
            "network": {"layers": [6, 4, 4, 3]},
            "optimizer": {**FAST_LR, "weight_prediction": "weight_difference"},
            "formats": NARROW_STOCHASTIC,
            "hardware": {"delay_lines": "block_ram"},
        },
        (5, 3, 7),
    ),
    "shift constants": (
        {"network": {"layers": [5, 6, 4]}, "formats": {"coefficient": {"shift": True}}},
        (4, 7),
    ),
}


def design_of(sections, lanes):
    # amaranth.sim cannot simulate the ECP5 multiplier primitive: products left to synthesis
    # (sim/test_multiply.py checks the primitive form against them).
    return build_design(make_config(train={"arith": "fixed"}, **sections), lanes, primitives=False)


def unused(design):
    """A design whose network a test does not elaborate."""
    design.discard()
    return design


@pytest.mark.parametrize("name", list(CASES))
def test_network_is_bit_exact(name):
    design = design_of(*CASES[name])
    trace = trace_for(design, 10)
    seen, _ = simulate(design, trace)
    assert first_mismatch(trace, seen) is None
    # Not vacuous: every sample came out and the weights moved.
    assert len(seen.results) == 10
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(trace.initial_weights, trace.final_weights, strict=True)
    )


def test_idle_cycles_and_back_pressure_change_nothing():
    design = design_of(*CASES["stochastic weight difference wrap"])
    trace = trace_for(design, 12, seed=3)
    seen, _ = simulate(design, trace, idle_seed=7)
    assert first_mismatch(trace, seen) is None


def test_a_changed_rounding_mode_is_found_and_located():
    sections, lanes = CASES["7-5-3 lanes not dividing"]
    reference = unused(design_of(sections, lanes))
    mutated = design_of({**sections, "formats": {"activation": {"rounding": "floor"}}}, lanes)
    trace = trace_for(reference, 6)
    seen, _ = simulate(mutated, trace)
    found = first_mismatch(trace, seen)
    assert found is not None
    assert found.role == "forward output" and found.stage == 1 and found.step == 0
    assert "first mismatch at step 0, stage 1, forward output, element" in str(found)


@pytest.mark.parametrize("lanes", [(4, 4), (8, 1), (1, 8)])
@pytest.mark.parametrize("loss", ["mse", "softmax_ce"])
def test_steady_state_cycles_per_sample_are_as_predicted(lanes, loss):
    design = design_of({"network": {"layers": [7, 5, 3], "loss": loss}}, lanes)
    trace = trace_for(design, 10)
    _, taken = simulate(design, trace)
    interval = np.diff(taken[:10])[-4:]  # samples only; the drain bubbles come after
    net = design.network
    assert list(interval) == [net.predicted_cycles_per_sample] * 4
    slowest = max(s.rows for s in net.stages)
    drain = max(s.drain for s in net.stages)
    assert net.predicted_cycles_per_sample <= slowest + OVERHEAD + drain + net.loss_unit.latency
    # The activation path: the row register, the prediction (5 cycles: eta_T * v in the fabric,
    # 3, its sum, its rounding), the operands' register, the forward product (4), one group-sum
    # level per 4 lanes of a row group, the row sum, the rounding, the z write (the update's
    # write-back, 1 + 12, ends a cycle earlier); nothing waits for random words, as no rounding
    # here is stochastic. With 8 lanes a row group sums 8 forward products: two registered
    # levels, one cycle more.
    expected = {(4, 4): [14, 14], (8, 1): [15, 14], (1, 8): [14, 15]}[lanes]
    assert [s.drain for s in net.stages] == expected


def test_stage_rejects_bad_lanes_and_init():
    design = unused(design_of(*CASES["7-5-3 one lane"]))
    plan = design.plan
    st = plan.stages[0]
    args = dict(
        plan=st,
        x_role=st.formats.activation,
        error_out=None,
        classes=3,
        bias=True,
        prediction=plan.config.optimizer.weight_prediction,
        seed=0,
        init=design.init[0],
    )
    with raises_in_init(ValueError, r"Lanes must be between 1 and the stage's 40 weights, not 41"):
        Stage(**args, lanes=41)
    with raises_in_init(TypeError, "Lanes must be a positive integer"):
        Stage(**args, lanes=2.0)
    with raises_in_init(ValueError, r"Init must have shape \(5, 8\)"):
        Stage(**{**args, "init": np.zeros((5, 7))}, lanes=2)
    with raises_in_init(ValueError, "Only stage 1 sends no error back"):
        Stage(**{**args, "error_out": st.formats.error}, lanes=2)
    with raises_in_init(TypeError, r"Multiplier must be a Multiplier, not \(18, 18\)"):
        Stage(**args, lanes=2, multiplier=(18, 18))


def test_generating_hardware_needs_the_pipelined_algorithm_without_stashing():
    with pytest.raises(ConfigError, match="optimizer.algorithm' must be 'pb'"):
        fixed_plan(make_config(optimizer={"algorithm": "sgd"}))
    with pytest.raises(ConfigError, match="weight_stashing' must be false"):
        fixed_plan(make_config(optimizer={"weight_stashing": True}))


def test_auto_lanes_balance_the_stages_within_the_dsp_budget():
    from pbhw.core.devices import load_device

    device = load_device("ecp5-85k")
    plan = fixed_plan(
        make_config(network={"layers": [64, 32, 32, 10]}, hardware={"constants": "dsp"})
    )
    lanes = auto_lanes(plan, device)
    costs = [lane_dsp_cost(plan, st, device) for st in plan.stages]
    used = sum(n * c for n, c in zip(lanes, costs, strict=True))
    budget = auto_budget(device)
    assert budget == int(0.8 * device.resources["dsp"]) and used <= budget
    weights = [st.n_out * (st.n_in + 1) for st in plan.stages]
    step = max(-(-w // n) for w, n in zip(weights, lanes, strict=True))
    # One lane more in the slowest stage would not fit: the step is as short as the budget allows.
    slowest = max(range(3), key=lambda i: -(-weights[i] // lanes[i]))
    assert used + costs[slowest] > budget or step == 1
    assert lanes == (6, 3, 1)  # balanced: 347, 352 and 330 rows


def test_auto_lanes_say_when_one_lane_does_not_fit():
    plan = fixed_plan(make_config(hardware={"device": "ice40-up5k"}))
    with pytest.raises(ConfigError, match="one lane per stage already needs"):
        auto_lanes(plan)
