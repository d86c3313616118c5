"""The general form of ``network.layers``: its checks, the plan's per-stage sizes, dataset
shapes, training a conv network in float, and the commands that refuse one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch.utils.flop_counter import FlopCounterMode

from golden.fixed_arith import FixedArithmetic
from pbhw.cli import main
from pbhw.core.config import ConfigError, LayerType, Norm, Pool, apply_sets, from_dict, load
from pbhw.core.datasets import Dataset
from pbhw.core.datasets import load as load_dataset
from pbhw.core.plan import derive_plan
from pbhw.tools.check import STAGE_COLUMNS, stage_rows
from pbhw.tools.train import check_fits, train

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cnn_mnist1d.toml"
FIXED_EXAMPLE = ROOT / "examples" / "cnn_mnist1d_fixed.toml"


def _conv(channels, kernel=3, **keys):
    return {"type": "conv", "channels": channels, "kernel": kernel, **keys}


DENSE = {"type": "dense", "units": 10}


def _config(input_shape, layers, **sections):
    network = {"input": input_shape, "layers": layers, **sections.pop("network", {})}
    return from_dict({"network": network, **sections})


def _error(input_shape, layers, **sections) -> str:
    with pytest.raises(ConfigError) as info:
        _config(input_shape, layers, **sections)
    return str(info.value)


def test_the_brief_example_gives_its_shapes():
    cfg = _config(
        [1, 40],
        [
            _conv(16, 5, stride=2, padding=2, norm="group", groups=4),
            _conv(16, 5, stride=2, padding=2, pool="avg"),
            DENSE,
        ],
    )
    specs = cfg.network.specs
    assert [sp.type for sp in specs] == [LayerType.CONV, LayerType.CONV, LayerType.DENSE]
    # (40 + 2*2 - 5) // 2 + 1 = 20; then 10, avg pooled to 5; then 10 units
    assert [sp.out_shape for sp in specs] == [(16, 20), (16, 5), (10,)]
    assert specs[0].norm is Norm.GROUP and specs[1].pool is Pool.AVG
    assert cfg.network.layers == (40, 320, 80, 10)
    assert cfg.network.num_stages == 3
    assert cfg.network.convolutional


def test_the_shorthand_is_unchanged_and_input_defaults_to_its_first_entry():
    cfg = from_dict({"network": {"layers": [64, 32, 10]}})
    assert cfg.network.input == (64,)
    assert cfg.network.specs is None
    assert "input" not in cfg.to_dict()["network"]
    shaped = from_dict({"network": {"layers": [64, 32, 10], "input": [1, 8, 8]}})
    assert shaped.network.input == (1, 8, 8) and shaped.network.layers == (64, 32, 10)


def test_a_general_form_of_dense_layers_is_a_perceptron():
    cfg = _config([1, 8, 8], [{"type": "dense", "units": 32}, DENSE])
    assert cfg.network.layers == (64, 32, 10)
    assert cfg.network.specs is None
    assert cfg.replace({"train.arith": "fixed"}).train.arith.value == "fixed"


def test_two_d_residual_with_projection_and_global_pool():
    cfg = _config(
        [3, 9, 9],
        [
            _conv(4, 3, padding=1),
            _conv(8, 3, stride=2, padding=1, residual=1, projection=True, pool="global_avg"),
        ],
    )
    last = cfg.network.specs[1]
    assert last.conv_shape == (8, 5, 5) and last.out_shape == (8,)
    assert last.residual_shape == (4, 9, 9) and last.projection_stride == (2, 2)


@pytest.mark.parametrize(
    ("input_shape", "layers", "fragments"),
    [
        ([1, 40], [_conv(8, 5, groups=3, norm="group"), DENSE], ["network.layers.0.groups"]),
        ([1, 40], [_conv(8, 5, group=4), DENSE], ["network.layers.0.group'", "did you mean"]),
        ([1, 40], [DENSE, {"type": "dense", "unit": 3}], ["network.layers.1.unit'"]),
        ([1, 6], [_conv(4, 9, padding=1), DENSE], ["network.layers.0.kernel", "padded input"]),
        ([2, 5, 5], [_conv(4, 7), DENSE], ["network.layers.0.kernel", "[2, 5, 5]"]),
        (
            [1, 40],
            [_conv(4, 3, padding=1), _conv(8, 3, padding=1, residual=1), DENSE],
            ["network.layers.1.residual", "[4, 40]", "[8, 40]", "projection"],
        ),
        ([1, 40], [_conv(4, 3, residual=1), DENSE], ["network.layers.0.residual", "before"]),
        (
            [1, 40],
            [_conv(4, 3, padding=1), _conv(4, 3, padding=1, residual=2), DENSE],
            ["network.layers.1.residual", "before the first layer"],
        ),
        ([1, 40], [DENSE, _conv(4, 3), DENSE], ["network.layers.1.type", "dense layer"]),
        ([40], [_conv(4, 3), DENSE], ["network.layers.0.type", "network.input"]),
        ([1, 40], [_conv(4, 3)], ["network.layers.0", "one value per class"]),
        ([1, 40], [_conv(4, 3, kind="x"), DENSE], ["network.layers.0.kind"]),
        ([1, 40], [{"type": "pool"}, DENSE], ["network.layers.0.type", "'conv', 'dense'"]),
        ([1, 40], [{"type": "conv", "channels": 4}, DENSE], ["network.layers.0.kernel", "missing"]),
        ([1, 40], [_conv(4, 3, stride=0), DENSE], ["network.layers.0.stride", ">= 1"]),
        ([1, 40], [_conv(4, 3, pool="mean"), DENSE], ["network.layers.0.pool", "'global_avg'"]),
        ([1, 40], [_conv(4, 3, groups=2), DENSE], ["network.layers.0.groups", "norm"]),
        ([1, 40], [_conv(4, 3, projection=True), DENSE], ["network.layers.0.projection"]),
        ([1, 1, 1], [_conv(4, 1, pool="max"), DENSE], ["network.layers.0.pool", "2 positions"]),
        ([1, 0], [_conv(4, 1), DENSE], ["network.input", "positive integers"]),
        (
            [2, 12],
            [
                _conv(3, 3, padding=1),
                _conv(6, 5, stride=2, padding=1, residual=1, projection=True),
                DENSE,
            ],
            ["network.layers.1.projection", "[3, 12]", "[6, 5]"],
        ),
    ],
)
def test_bad_layers_name_the_entry_and_key(input_shape, layers, fragments):
    message = _error(input_shape, layers)
    for fragment in fragments:
        assert fragment in message, message


def test_general_form_needs_network_input():
    with pytest.raises(ConfigError, match="'network.input' is missing"):
        from_dict({"network": {"layers": [_conv(4, 3), DENSE]}})


def test_shorthand_input_must_hold_the_first_entry():
    with pytest.raises(ConfigError, match=r"'network.input' \[1, 8, 7\] must hold 64"):
        from_dict({"network": {"layers": [64, 10], "input": [1, 8, 7]}})


def test_set_reaches_into_a_layer_table():
    raw = {"network": {"input": [1, 40], "layers": [_conv(4, 3), DENSE]}}
    cfg = from_dict(apply_sets(raw, ["network.layers.0.channels=6"]))
    assert cfg.network.specs[0].out == 6


# --------------------------------------------------------------------------------------------
# The plan


def _flop_macs(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() // 2


def test_forward_multiplies_agree_with_torch_flop_counter():
    cfg = _config(
        [2, 11, 9],
        [
            _conv(4, 3, stride=2, padding=1),
            _conv(6, 3, padding=1, residual=1, projection=True),
            DENSE,
        ],
    )
    plan = derive_plan(cfg)
    first, second, dense = plan.stages
    x = torch.zeros(1, 2, 11, 9)
    assert first.forward_multiplies == _flop_macs(F.conv2d, x, torch.zeros(4, 2, 3, 3), None, 2, 1)
    h = torch.zeros(1, 4, 6, 5)
    conv = _flop_macs(F.conv2d, h, torch.zeros(6, 4, 3, 3), None, 1, 1)
    projection = _flop_macs(F.conv2d, h, torch.zeros(6, 4, 1, 1))
    assert second.forward_multiplies == conv + projection
    assert dense.forward_multiplies == _flop_macs(
        F.linear, torch.zeros(1, 180), torch.zeros(10, 180)
    )


def test_stage_sizes_of_a_normed_stage():
    plan = derive_plan(_config([2, 12], [_conv(4, 3, padding=1, norm="group", groups=2), DENSE]))
    st = plan.stages[0]
    assert st.in_shape == (2, 12) and st.out_shape == (4, 12)
    assert [name for name, _ in st.parameter_shapes] == [
        "weight", "bias", "norm_scale", "norm_shift",
    ]  # fmt: skip
    assert st.parameters == 4 * 2 * 3 + 4 + 4 + 4
    # conv products plus one scale product per normalized value
    assert st.forward_multiplies == 48 * 2 * 3 + 48
    # input, ReLU mask and the conv output the norm's backward needs, for D + 1 samples
    assert st.stash_values == (st.delay + 1) * (24 + 48 + 48)
    assert st.delay == 3
    rows = stage_rows(plan)
    assert dict(zip(STAGE_COLUMNS, rows[0], strict=True))["output"] == "4x12"
    assert rows[1][STAGE_COLUMNS.index("parameters")] == str(48 * 10 + 10)


def test_perceptron_stages_keep_their_sizes():
    plan = derive_plan(from_dict({"network": {"layers": [8, 6, 3], "bias": False}}))
    assert [st.parameters for st in plan.stages] == [48, 18]
    assert [st.forward_multiplies for st in plan.stages] == [48, 18]
    assert [st.stash_values for st in plan.stages] == [4 * (8 + 6), 2 * 6]


# --------------------------------------------------------------------------------------------
# Data shapes and training


@pytest.mark.parametrize(
    ("spec", "shape"), [("digits", (1, 8, 8)), ("mnist1d", (1, 40))]
)  # fmt: skip
def test_datasets_have_sample_shapes(spec, shape):
    data = load_dataset(spec)
    assert data.sample_shape == shape
    assert math.prod(shape) == data.num_features


def test_network_input_must_match_the_dataset_shape():
    data = load_dataset("digits")
    check_fits(_config([1, 8, 8], [_conv(4, 3), DENSE]), data)
    check_fits(from_dict({"network": {"layers": [64, 10], "input": [64]}}), data)
    with pytest.raises(ConfigError, match=r"'network.input' \[1, 4, 16\] .*\[1, 8, 8\]"):
        check_fits(_config([1, 4, 16], [_conv(4, 3), DENSE]), data)


def _toy(shape, classes=3, n=150, seed=0) -> Dataset:
    """Classes told apart by which channel-position block is bright."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=gen)
    x = 0.3 * torch.randn(n, *shape, generator=gen, dtype=torch.float64)
    width = shape[-1] // classes
    for c in range(classes):
        x[y == c, ..., c * width : (c + 1) * width] += 1.0
    x = x.reshape(n, -1)
    return Dataset("toy", x[:120], y[:120], x[120:], y[120:], classes, shape)


@pytest.mark.parametrize("algorithm", ["pb", "sgd"])
def test_a_conv_network_learns_a_toy_problem_in_float(algorithm):
    cfg = _config(
        [1, 12],
        [
            _conv(4, 3, padding=1, norm="group", groups=2),
            _conv(4, 3, padding=1, residual=1, pool="max"),
            {"type": "dense", "units": 3},
        ],
        network={"loss": "softmax_ce"},
        optimizer={"algorithm": algorithm, "lr": 0.5},
        train={"epochs": 4},
    )
    threads = torch.get_num_threads()
    result = train(cfg, dataset=_toy((1, 12)))
    assert torch.get_num_threads() == threads
    assert result.test_accuracy >= 0.9
    assert [len(w) for w in result.weights] == [4, 2, 2]
    assert result.weights[0][2].shape == (4,)  # the norm's scale
    assert not any(t.is_inference() for stage in result.weights for t in stage if t is not None)


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# Every command that needs dense stages refuses a conv config with one error line.
@pytest.mark.parametrize(
    "args, fragment",
    [
        (("generate", EXAMPLE, "-o", "{tmp}/out"), "convolutional stages"),
        (("flow", EXAMPLE, "-o", "{tmp}/flow"), "convolutional stages"),
        (
            ("sweep", EXAMPLE, "--grid", "optimizer.lr=0.1,0.2", "-o", "{tmp}/sweep"),
            "convolutional stages",
        ),
        (
            (
                "sweep",
                EXAMPLE,
                "--arith",
                "float",
                "--grid",
                "optimizer.lr=0.1,0.2",
                "-o",
                "{tmp}/s",
            ),
            "convolutional stages",
        ),
        (("train", EXAMPLE, "--export", "{tmp}/w.pt"), "convolutional stages"),
        (("generate", FIXED_EXAMPLE, "-o", "{tmp}/out"), "convolutional stages"),
        (("flow", FIXED_EXAMPLE, "-o", "{tmp}/flow"), "convolutional stages"),
        (
            ("sweep", FIXED_EXAMPLE, "--grid", "optimizer.lr=0.1,0.2", "-o", "{tmp}/sweep"),
            "convolutional stages",
        ),
    ],
)
def test_commands_that_need_dense_layers_refuse_a_conv_config(args, fragment, tmp_path):
    result = _run(*(str(a).format(tmp=tmp_path) for a in args))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert fragment in errors[0]
    assert not any(tmp_path.iterdir())


def test_check_prints_the_stage_sizes_of_the_example():
    result = _run("check", EXAMPLE)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    start = [line.strip() for line in lines].index("stage sizes (per sample)")
    cells = [
        [cell.strip() for cell in line.strip("│").split("│")]
        for line in lines[start:]
        if line.startswith("│")
    ]
    rows = stage_rows(derive_plan(load(EXAMPLE)))
    assert [tuple(c) for c in cells[: len(rows)]] == rows
    assert "config OK" in result.stdout


EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_builds_its_float_and_its_fixed_point_model(path):
    """Each example loads and derives its plan in either arithmetic, and the bit-exact model
    builds from it (every width check passed): ``pbhw train EXAMPLE [--arith fixed]`` cannot
    stop at the config."""
    derive_plan(load(path, ['train.arith="float"']))
    FixedArithmetic(derive_plan(load(path, ['train.arith="fixed"'])))
