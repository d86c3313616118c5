"""The analytic resource model: the features a design's LUTs and flip-flops are linear in, and
their calibrated weights.

:func:`stage_features` counts one stage's features from its shape, formats, lanes and products;
:func:`predict` weighs a sum of them with :data:`CALIBRATION`. Two readers share this one rule:
the fast estimate of a generated design (:func:`pbhw.tools.estimate.fast_estimate`, from its
manifest) and ``lanes = "auto"`` (:func:`rtl_gen.lanes.auto_lanes`, from the datapath plan,
before anything is generated). The weights are fitted by
:func:`pbhw.tools.estimate.fit_calibration` against Yosys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pbhw.core.config import WeightPrediction
from pbhw.core.datapath import dot_accumulator, fabric_adder_bits, fabric_register_bits
from pbhw.core.devices import Device, dsp_count
from pbhw.core.fixed import FixedFormat, Rounding

__all__ = ["CALIBRATION", "FEATURES", "predict", "stage_features"]

#: The features, in the order of the tables of :data:`CALIBRATION`.
FEATURES = (
    "constant",
    "stages",
    "lanes",
    "accumulator_bits",
    "requantizer_bits",
    "product_bits",
    "split_product_bits",
    "constant_adder_bits",
    "constant_register_bits",
    "vector_bits",
    "column_sum_bits",
    "pipeline_bits",
    "random_sources",
    "delay_memory_bits",
)

#: Every fitting constant of the model, in one place: resource -> feature -> units per unit of
#: the feature (see :func:`stage_features`). First-order values from the datapath's structure on
#: LUT4 devices (an adder or a saturating mux costs about one LUT4 per bit); the lead refits them
#: with :func:`pbhw.tools.estimate.fit_calibration` against
#: :func:`pbhw.tools.estimate.synthesize` on :func:`pbhw.tools.estimate.calibration_points`.
CALIBRATION: dict[str, dict[str, float]] = {
    # Fitted by `bench/estimate_calibration.py --fit` (non-negative least squares on six
    # designs' Yosys synth_ecp5 counts, bench/results/estimate_calibration.json), pipelined lanes
    # on MULT18X18D instances (their operand and product registers are in the DSP blocks).
    "lut": {
        "constant": 128.514,
        "stages": 0.0,
        "lanes": 0.0,
        "accumulator_bits": 0.0,
        "requantizer_bits": 8.281,  # a lane's update, prediction and product logic per bit
        "split_product_bits": 0.0,
        # the adders of the products by a constant in the fabric, net of the sums of the
        # hard-multiplier pieces they replace (set by least squares through 0, after the fitted
        # features, on Yosys runs of the default example with "fabric" at 13, 7, 3, 15, 8, 3,
        # 16, 8, 3 and 18, 9, 3 lanes: 42,097, 45,423, 46,047 and 50,203 LUT for 13,084, 14,798,
        # 15,371 and 17,085 adder bits; with 3-cycle trees, 42,472, 46,465 and 54,703 LUT at
        # 13, 7, 3, 16, 8, 3 and 20, 10, 4: the model is 1.1 % over, 0.1 % and 3.9 % under)
        "constant_adder_bits": 0.088,
        "constant_register_bits": 0.0,
        "vector_bits": 1.8,  # load/rotate multiplexers of the register rings and vectors
        "column_sum_bits": 3.646,  # adder, rotation and error requantizer per column-sum bit
        "pipeline_bits": 0.0,
        "random_sources": 900.0,  # one Threefry-2x32-13 core (hand-set: not fitted)
        # a delay line's block RAM, against its registers: within 350 LUT either way on the
        # three designs of "ff" below
        "delay_memory_bits": 0.0,
    },
    "ff": {
        "constant": 193.747,
        "stages": 0.0,
        "lanes": 0.0,
        "accumulator_bits": 0.0,
        "requantizer_bits": 0.0,
        "product_bits": 4.373,  # product pieces and their sums, registered
        "split_product_bits": 0.0,
        "constant_adder_bits": 0.0,
        # the operand and partial-sum registers of those products (counted exactly from their
        # adder trees, pbhw.core.datapath.fabric_register_bits), which have no pieces in
        # product_bits, and with them the rest of a fabric lane's registers that the features
        # fitted on "dsp" designs miss: set by least squares through 0, after the fitted
        # features, on Yosys runs of the default example with "fabric" (3-cycle trees) at
        # 13, 7, 3, 16, 8, 3, 18, 9, 3 and 20, 10, 4 lanes: 48,650, 53,644, 59,838 and 63,865
        # FF for 9,665, 11,344, 12,603 and 14,286 register bits; the model is within 2.1 % of
        # each
        "constant_register_bits": 2.132,
        "vector_bits": 2.263,  # rings, dz, outputs and their payload registers
        "column_sum_bits": 0.026,
        "pipeline_bits": 0.13,  # the lane pipeline's delay lines
        "random_sources": 416.0,  # a pipelined Threefry core: 6 x 64 + 32 (hand-set)
        # the registers a delay line's block RAM stands for leave the count, but fewer than
        # one per bit: as registers, equal taps of a lane's lines merge in synthesis (set by
        # least squares through 0 on Yosys runs of the default example, registers against
        # block RAM: 13, 7, 3 lanes 55,583 -> 49,789 FF for 7,263 register bits; 16, 9, 3
        # 64,766 -> 56,720 for 10,908; 19, 10, 3 73,277 -> 64,947 for 15,552)
        "delay_memory_bits": -0.627,
    },
    # 6-input LUTs absorb part of the random logic; arithmetic still takes one LUT per bit.
    "lut_inputs_scale": {"4": 1.0, "6": 0.8},
}


def stage_features(
    *,
    stage: int,
    n_in: int,
    n_out: int,
    bias: bool,
    lanes: int,
    roles: Mapping,
    x_format: FixedFormat | None,
    prediction: WeightPrediction,
    shapes: Iterable[tuple[int, int, int]],
    fabric_constants: Iterable[tuple[int, int]],
    drain: int,
    device: Device,
    delay_memory_bits: int = 0,
) -> dict[str, float]:
    """The features of one stage (every one of :data:`FEATURES` but ``constant``).

    Parameters
    ----------
    stage, n_in, n_out, bias, lanes
        The stage's index (1-based), sizes, bias column and lanes.
    roles : mapping
        Role name -> its format (anything with ``format``, a FixedFormat, and ``rounding``).
    x_format : FixedFormat or None
        The stage's input format (the previous stage's activation); None for stage 1 (its own).
    prediction : WeightPrediction
        The stage's weight prediction (``NONE`` where its horizon is 0).
    shapes : iterable of (int, int, int)
        ``(a, b, count)`` of every hard-multiplier piece of the stage's lanes.
    fabric_constants : iterable of (int, int)
        ``(a_bits, code)`` of each of one lane's products by a constant built in the fabric:
        their adders (:func:`pbhw.core.datapath.fabric_adder_bits`) and registers
        (:func:`pbhw.core.datapath.fabric_register_bits`).
    drain : int
        The lane pipeline's depth (``pipeline["drain"]`` of the manifest), which only the
        flip-flops depend on; 0 for a combinational design.
    delay_memory_bits : int
        Register bits of the stage's delay lines held in block RAM instead
        (:attr:`pbhw.core.manifest.DelayMemory.register_bits`, summed over the stage's lanes).
    """
    p = lanes
    w = {role: spec.format.width for role, spec in roles.items()}
    cols = n_in + (1 if bias else 0)
    x_format = x_format or roles["activation"].format
    feats = dict.fromkeys(FEATURES[1:], 0.0)
    feats["stages"] = 1
    feats["lanes"] = p
    # The exact accumulator widths of the datapath plan (pbhw.core.datapath).
    forward = dot_accumulator("forward", roles["weight"].format, x_format, cols).width
    backward = dot_accumulator("backward", roles["weight"].format, roles["error"].format, n_out)
    feats["accumulator_bits"] = p * (forward + backward.width)
    stored = w["gradient"] + w["velocity"] + w["weight"] + w["activation"] + w["error"]
    if prediction is not WeightPrediction.NONE:
        stored += w["weight"]
    feats["requantizer_bits"] = p * stored
    fabric_constants = list(fabric_constants)
    feats["constant_adder_bits"] = p * sum(fabric_adder_bits(a, c) for a, c in fabric_constants)
    feats["constant_register_bits"] = p * sum(
        fabric_register_bits(a, c) for a, c in fabric_constants
    )
    # The lane pipeline's delay lines: roughly a lane's operands and results per cycle of its
    # depth (docs/hardware.md).
    x_bits = x_format.width
    feats["pipeline_bits"] = p * drain * (2 * x_bits + w["error"] + w["weight"])
    feats["delay_memory_bits"] = delay_memory_bits
    for a, b, count in shapes:
        feats["product_bits"] += count * (a + b)
        feats["split_product_bits"] += count * (dsp_count(a, b, device) - 1) * (a + b)
    # The stage's register vectors (docs/hardware.md): the two input rings, the error, dz and
    # output vectors; and, after stage 1, the ring of column sums with one error requantizer
    # per input.
    feats["vector_bits"] = 2 * cols * x_bits + n_out * (2 * w["error"] + w["activation"])
    if stage > 1:
        feats["column_sum_bits"] = cols * backward.width
    # Threefry cores: one per lane and stochastic update point, per completing row and per
    # error column when those round stochastically.
    stochastic = [r for r in roles if roles[r].rounding is Rounding.STOCHASTIC]
    points = sum(r in stochastic for r in ("gradient", "velocity", "weight"))
    if "weight" in stochastic and prediction is WeightPrediction.VELOCITY:
        points += 1
    feats["random_sources"] = p * points
    if "activation" in stochastic:
        feats["random_sources"] += max(1, (cols - 1 + p) // cols)
    if "error" in stochastic and stage > 1:
        feats["random_sources"] += n_in
    return feats


def predict(
    resource: str,
    features: Mapping[str, float],
    device: Device,
    table: Mapping[str, Mapping[str, float]] | None = None,
) -> float:
    """``lut`` or ``ff`` of a design with ``features`` (summed over its stages, with
    ``constant`` 1) on ``device``, weighed by ``table`` (default :data:`CALIBRATION`; a fit
    compares others)."""
    table = CALIBRATION if table is None else table
    scale = 1.0
    if resource == "lut":
        scale = table["lut_inputs_scale"].get(str(device.lut_inputs), 1.0)
    return scale * sum(table[resource].get(k, 0.0) * v for k, v in features.items())
