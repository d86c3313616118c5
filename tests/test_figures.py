"""pbhw.core.figures: useful multiplies, the figures of merit and the memory model, against
numbers computed by hand."""

from pathlib import Path

import pytest

from pbhw.core.config import from_dict, load
from pbhw.core.figures import figures_of_merit, memory_model, useful_multiplies
from pbhw.core.plan import derive_plan

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mlp_digits.toml"


def test_useful_multiplies_of_the_default_example():
    plan = derive_plan(load(EXAMPLE))
    # 2 x 64 x 32 (stage 1 sends no error) + 3 x 32 x 32 + 3 x 32 x 10; no bias columns
    assert useful_multiplies(plan) == 4096 + 3072 + 960 == 8128


def test_figures_of_merit():
    f = figures_of_merit(
        fmax_mhz=88.0, cycles_per_sample=371, useful=8128, dsp_blocks=156, mac_fmax_mhz=224.0
    )
    assert f.samples_per_second == pytest.approx(88e6 / 371)
    assert f.dsp_bound == pytest.approx(156 * 224e6 / 8128)
    assert f.efficiency == pytest.approx((88e6 / 371) / (156 * 224e6 / 8128))
    assert 0.05 < f.efficiency < 0.06
    unrouted = figures_of_merit(
        fmax_mhz=88.0, cycles_per_sample=371, useful=8128, dsp_blocks=156, mac_fmax_mhz=None
    )
    assert unrouted.dsp_bound is None and unrouted.efficiency is None
    with pytest.raises(ValueError, match="cycles_per_sample must be positive"):
        figures_of_merit(
            fmax_mhz=88.0, cycles_per_sample=0, useful=1, dsp_blocks=1, mac_fmax_mhz=None
        )


SMALL = {
    "name": "small",
    "network": {"layers": [4, 3, 2], "bias": True},
    "optimizer": {"reference_batch": 8, "weight_prediction": "weight_difference"},
    "formats": {"activation": {"width": 10, "frac": 6}, "weight": {"width": 12, "frac": 10}},
    "overrides": [{"layer": 1, "formats": {"activation": {"width": 8, "frac": 4}}}],
}


def test_memory_model_by_hand():
    plan = derive_plan(from_dict(SMALL))
    model = memory_model(plan)
    assert model.batch_size == 8  # optimizer.reference_batch
    one, two = model.stages
    # stage 1: (4 + 1) x 3 words; delay 3 -> 4 stashed inputs of 4 codes of its own activation
    # format (8 bits, the sample's) and 3 ReLU mask bits; w_prev for weight_difference
    assert (one.weight, one.velocity, one.w_prev) == (15 * 12, 15 * 20, 15 * 12)
    assert one.stash == 4 * (4 * 8 + 3)
    assert one.batch_activation == 8 * 4 * 8
    # stage 2: (3 + 1) x 2 words; delay 1 -> 2 stashed inputs of 3 codes of stage 1's
    # activation format (8 bits); no ReLU on the last stage
    assert (two.weight, two.velocity, two.w_prev) == (8 * 12, 8 * 20, 8 * 12)
    assert two.stash == 2 * (3 * 8)
    assert two.batch_activation == 8 * 3 * 8
    assert one.batch_weight == one.weight and two.batch_velocity == two.velocity
    assert model.pipelined == (180 + 300 + 180 + 140) + (96 + 160 + 96 + 48)
    assert model.batch == (180 + 300 + 256) + (96 + 160 + 192)
    assert memory_model(plan, batch_size=1).stages[0].batch_activation == 4 * 8


def test_stash_matches_the_generated_stage():
    """The model's stash is the stash the generator builds (its memory_bits)."""
    from rtl_gen.design import build_design

    design = build_design(from_dict(SMALL))
    design.discard()
    model = memory_model(design.plan)
    for stage, mem in zip(design.network.stages, model.stages, strict=True):
        assert stage.memory_bits["stash"] == mem.stash
        assert stage.memory_bits["w_prev"] > 0 and mem.w_prev > 0
