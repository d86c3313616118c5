"""Whole pipelines under the RTL simulator against the golden trace, bit for bit.

Each case is one build (cached by content hash in ``sim_build/``): the default example, a single
stage, odd sizes
with lanes that divide no row and the softmax loss with stochastic rounding everywhere, and the
weight-difference prediction without bias. Samples come with random idle cycles and results
leave under random back-pressure; every token, loss error, prediction, final W/V code and
saturation counter must be equal.
"""

from pathlib import Path

import pytest
import torch

from pbhw.core.config import load
from pbhw.tools.toolchain import ToolError, simulator_tool
from pbhw.tools.verify import verify, verify_epochs
from sim.runner import simulator

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "examples" / "mlp_digits.toml"

STOCHASTIC = [
    f"formats.{role}.rounding='stochastic'"
    for role in ("activation", "error", "gradient", "velocity", "weight")
]
CASES = {
    # One stage between the sample stream (random idle cycles) and the loss unit and result
    # stream (random back-pressure): the stage-level check.
    "one_stage": (("network.layers=[9, 4]", "hardware.lanes=[7]"), 30),
    "odd_softmax_stochastic": (
        (
            "network.layers=[7, 5, 3]",
            "network.loss='softmax_ce'",
            "hardware.lanes=[3, 4]",
            "optimizer.reference_batch=1",
            "optimizer.lr=0.05",
            *STOCHASTIC,
        ),
        40,
    ),
    "weight_difference_no_bias": (
        (
            "network.layers=[6, 4, 4, 3]",
            "network.bias=false",
            "optimizer.weight_prediction='weight_difference'",
            "hardware.lanes=[5, 3, 7]",
            "formats.weight.overflow='wrap'",
        ),
        40,
    ),
}


def random_inputs(config, samples, seed):
    gen = torch.Generator().manual_seed(seed)
    n_in, classes = config.network.layers[0], config.network.layers[-1]
    x = torch.rand(samples, n_in, generator=gen, dtype=torch.float64) * 2 - 1
    return x, torch.randint(0, classes, (samples,), generator=gen).tolist()


@pytest.mark.parametrize("name", list(CASES))
def test_pipeline_is_bit_exact_under_idle_cycles_and_back_pressure(name):
    sets, samples = CASES[name]
    config = load(DEFAULT, (f"name='{name}'", *sets))
    sim = simulator()
    try:
        simulator_tool(sim)
    except ToolError as error:
        pytest.skip(f"{sim} unavailable: {error}")
    x, y = random_inputs(config, samples, seed=len(name))
    result = verify(
        config, samples=samples, simulator=sim, idle=0.3, backpressure=0.3, seed=1, x=x, labels=y
    )
    assert result.bit_exact, result.mismatch
    assert result.samples == samples


def test_default_example_trains_one_epoch_bit_exact_on_the_compiled_harness():
    """The default example, as shipped, on its own dataset: one whole epoch in the trainer's
    order, with idle cycles and back-pressure, on the compiled Verilator harness (its cocotb
    build, with every signal public, took several minutes longer than the harness's; the cocotb
    path is checked on the smaller shapes above)."""
    if simulator() != "verilator":
        pytest.skip("the compiled harness is Verilator's")
    try:
        simulator_tool("verilator")
    except ToolError as error:
        pytest.skip(f"verilator unavailable: {error}")
    config = load(DEFAULT, ("train.epochs=1",))
    result = verify_epochs(config, epochs=1, idle=0.1, backpressure=0.1, seed=1)
    assert result.bit_exact, result.mismatch
    assert result.rtl_test_accuracy == result.golden_test_accuracy
    assert result.measured_cycles_per_sample == result.predicted_cycles_per_sample
