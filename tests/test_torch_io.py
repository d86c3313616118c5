"""PyTorch in and out: ``pbhw.from_torch``, ``--init-from`` (``train.init_from``) and
``pbhw train --export``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

import pbhw
from golden.float_arith import FloatState
from golden.float_arith import evaluate as float_evaluate
from pbhw.cli import main
from pbhw.core.config import ConfigError, from_dict, load
from pbhw.core.datasets import load as load_dataset
from pbhw.core.errors import InputError
from pbhw.core.plan import derive_plan
from pbhw.core.weights import initial_codes, initial_weights, weight_codes
from pbhw.flows.sweep import config_key, expand, parse_grid
from pbhw.tools.train import train as train_config

SMALL = """\
name = "tiny"
seed = 3
[network]
layers = [64, 8, 10]
[hardware]
lanes = 2
[train]
dataset = "digits"
epochs = 1
"""


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def mlp(*sizes: int, bias: bool = True, flatten: bool = False) -> nn.Sequential:
    torch.manual_seed(1)
    mods: list[nn.Module] = [nn.Flatten()] if flatten else []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        mods.append(nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def assert_input_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(SMALL, encoding="utf-8")
    return path


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "init.pt"
    torch.save(mlp(64, 8, 10).state_dict(), path)
    return path


# from_torch


def test_from_torch_reads_layers_and_bias() -> None:
    cfg = pbhw.from_torch(mlp(64, 32, 32, 10), (64,))
    assert cfg.network.layers == (64, 32, 32, 10) and cfg.network.bias
    assert cfg.optimizer == from_dict({}).optimizer  # other keys default
    cfg = pbhw.from_torch(
        mlp(64, 16, 10, bias=False, flatten=True),
        (1, 8, 8),
        name="net",
        optimizer={"lr": 0.05},
    )
    assert cfg.network.layers == (64, 16, 10) and not cfg.network.bias
    assert cfg.name == "net" and cfg.optimizer.lr == 0.05


@pytest.mark.parametrize(
    ("model", "shape", "fragments"),
    [
        (
            nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 10)),
            (1, 8, 8),
            ["module 0", "Conv2d", "nn.Linear and nn.ReLU"],
        ),
        (
            nn.Sequential(nn.Linear(64, 8), nn.Sigmoid(), nn.Linear(8, 10)),
            (64,),
            ["module 1", "Sigmoid"],
        ),
        (
            nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 10)),
            (64,),
            ["module 2", "Dropout"],
        ),
        (nn.Sequential(nn.Linear(64, 8), nn.Linear(8, 10)), (64,), ["module 1", "Linear", "ReLU"]),
        (
            nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10), nn.ReLU()),
            (64,),
            ["module 3", "ReLU", "last"],
        ),
        (
            nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10, bias=False)),
            (64,),
            ["module 2", "bias"],
        ),
        (
            nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(9, 10)),
            (64,),
            ["module 2", "9 inputs", "8"],
        ),
        (
            nn.Sequential(nn.Linear(60, 8), nn.ReLU(), nn.Linear(8, 10)),
            (64,),
            ["module 0", "60 inputs", "64"],
        ),
        (
            nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)),
            (1, 8, 8),
            ["input_shape", "Flatten"],
        ),
        (nn.Sequential(nn.ReLU()), (64,), ["nn.Linear"]),
        (nn.Linear(64, 10), (64,), ["nn.Sequential"]),
    ],
)
def test_from_torch_refuses(model: nn.Module, shape: tuple[int, ...], fragments: list[str]):
    with pytest.raises(InputError) as info:
        pbhw.from_torch(model, shape)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_importing_pbhw_does_not_import_torch() -> None:
    code = "import sys, pbhw; assert 'torch' not in sys.modules; assert callable(pbhw.from_torch)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_from_torch_settings_cannot_contradict_the_model() -> None:
    with pytest.raises(InputError, match=r"network.bias = False was given"):
        pbhw.from_torch(mlp(64, 10), (64,), network={"bias": False})
    cfg = pbhw.from_torch(mlp(64, 10), 64, network={"loss": "softmax_ce"})
    assert cfg.network.layers == (64, 10) and cfg.network.loss.value == "softmax_ce"


# train.init_from in pbhw.core.weights


def test_initial_weights_come_from_the_checkpoint(ckpt: Path) -> None:
    cfg = from_dict({"network": {"layers": [64, 8, 10]}, "train": {"init_from": str(ckpt)}})
    state = torch.load(ckpt, weights_only=True)
    weights = initial_weights(derive_plan(cfg))
    for (w, b), key in zip(weights, ("0", "2"), strict=True):
        assert w.dtype == torch.float64
        assert torch.equal(w, state[f"{key}.weight"].double())
        assert torch.equal(b, state[f"{key}.bias"].double())


# The round trip: checkpoint -> pbhw train -> export -> nn.Sequential


def test_train_from_checkpoint_and_export_round_trip(
    tmp_path: Path, small: Path, ckpt: Path
) -> None:
    out, js = tmp_path / "trained.pt", tmp_path / "result.json"
    result = run("train", small, "--init-from", ckpt, "--export", out, "--json", js)
    assert result.exit_code == 0, result.output
    model = mlp(64, 8, 10)
    model.load_state_dict(torch.load(out, weights_only=True))
    data = load_dataset("digits")
    summary = json.loads(js.read_text())
    with torch.no_grad():
        model64 = model.double()
        test = (model64(data.x_test.double()).argmax(1) == data.y_test).double().mean()
        train = (model64(data.x_train.double()).argmax(1) == data.y_train).double().mean()
    assert float(test) == summary["test_accuracy"]
    assert float(train) == summary["train_accuracy"]
    # prediction for prediction: pbhw's own evaluation of its trained weights
    cfg = load(small).replace({"train.init_from": str(ckpt)})
    trained = train_config(cfg, dataset=data)
    exported = torch.load(out, weights_only=True)
    for (w, b), key in zip(trained.weights, ("0", "2"), strict=True):
        assert torch.equal(exported[f"{key}.weight"], w)
        assert torch.equal(exported[f"{key}.bias"], b)
    plan = derive_plan(cfg)
    states = [FloatState(w, b, False) for w, b in trained.weights]
    model32 = mlp(64, 8, 10)
    model32.load_state_dict(exported)  # float32 parameters
    for x in (data.x_test, data.x_train):
        ours = float_evaluate(plan.stages, states, x).argmax(1)
        with torch.no_grad():
            assert torch.equal(model64(x.double()).argmax(1), ours)
            assert torch.equal(model32(x.float()).argmax(1), ours)  # float32 too
    # started from the checkpoint: the same run from the seed's weights ends elsewhere
    seeded = run("train", small, "--export", tmp_path / "seeded.pt")
    assert seeded.exit_code == 0, seeded.output
    other = torch.load(tmp_path / "seeded.pt", weights_only=True)
    assert not torch.equal(other["0.weight"], torch.load(out, weights_only=True)["0.weight"])


def test_fixed_export_is_dequantized_codes(tmp_path: Path, small: Path, ckpt: Path) -> None:
    out = tmp_path / "fixed.pt"
    result = run("train", small, "--arith", "fixed", "--init-from", ckpt, "--export", out)
    assert result.exit_code == 0, result.output
    state = torch.load(out, weights_only=True)
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    mlp(64, 8, 10).load_state_dict(state)
    for tensor in state.values():
        codes = tensor.double() * 2.0**13  # formats.weight.frac
        assert torch.equal(codes, codes.round())


# pbhw generate --init-from


def read_w_codes(directory: Path, cfg, stage: int, lanes: int) -> np.ndarray:
    st = derive_plan(cfg).stages[stage - 1]
    bits = st.formats.weight.format.width
    rows = (directory / f"{cfg.name}_stage{stage}_w.hex").read_text().split()
    flat = []
    for row in rows:
        value = int(row, 16)
        for lane in range(lanes):
            code = (value >> (lane * bits)) & ((1 << bits) - 1)
            flat.append(code - (1 << bits) if code >> (bits - 1) else code)
    cols = st.n_in + int(cfg.network.bias)
    return np.array(flat[: st.n_out * cols]).reshape(st.n_out, cols)


def test_generate_writes_the_checkpoint_codes(tmp_path: Path, small: Path, ckpt: Path) -> None:
    out = tmp_path / "rtl"
    result = run("generate", small, "--init-from", ckpt, "-o", out)
    assert result.exit_code == 0, result.output
    cfg = load(small).replace({"train.init_from": str(ckpt)})
    state = torch.load(ckpt, weights_only=True)
    plan = derive_plan(cfg)
    for i, key in ((1, "0"), (2, "2")):
        expected = weight_codes(
            plan.stages[i - 1], state[f"{key}.weight"].double(), state[f"{key}.bias"].double()
        )
        assert np.array_equal(read_w_codes(out, cfg, i, 2), expected)
        assert np.array_equal(initial_codes(plan)[i - 1], expected)


# pbhw verify --init-from


@pytest.mark.slow
def test_verify_from_checkpoint_is_bit_exact(small: Path, ckpt: Path) -> None:
    result = run("verify", small, "--init-from", ckpt, "--samples", "20")
    assert result.exit_code == 0, result.output
    assert "bit-exact" in result.stdout
    # progress on stderr while the cocotb model is built (or found) and run
    assert "verilator model for cocotb: building, or reusing" in result.stderr
    assert "simulating 20 samples under cocotb ..." in result.stderr


# Bad checkpoints: one error line, exit 2, nothing written


def bad_checkpoint(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pt"
    state = mlp(64, 8, 10).state_dict()
    if kind == "missing":
        return path
    if kind == "not_torch":
        path.write_text("hello", encoding="utf-8")
    elif kind == "not_state_dict":
        torch.save([1, 2, 3], path)
    elif kind == "whole_model":
        torch.save(mlp(64, 8, 10), path)
    elif kind == "wrong_key":
        state["1.weight"] = state.pop("2.weight")
        torch.save(state, path)
    elif kind == "wrong_shape":
        state["2.weight"] = torch.zeros(10, 9)
        torch.save(state, path)
    return path


BAD = {
    "missing": ["does not exist"],
    "not_torch": ["torch.load"],
    "not_state_dict": ["state_dict", "list"],
    "whole_model": ["model.state_dict()"],
    "wrong_key": ["'1.weight'"],
    "wrong_shape": ["'2.weight'", "[10, 9]", "[10, 8]"],
}


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("command", ["train", "generate", "verify", "flow"])
def test_bad_checkpoint(tmp_path: Path, small: Path, kind: str, command: str) -> None:
    path = bad_checkpoint(tmp_path, kind)
    out = tmp_path / "out"
    extra = {
        "train": ["--export", out, "--json", tmp_path / "r.json"],
        "generate": ["-o", out],
        "verify": ["--json", tmp_path / "r.json"],
        "flow": ["-o", out],
    }[command]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run(command, small, "--init-from", path, *extra)
    assert_input_error(result, str(path), *BAD[kind])
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# Sweeps: a grid over checkpoints; a point's identity holds the checkpoint's content


def test_sweep_points_know_their_checkpoint(tmp_path: Path, ckpt: Path) -> None:
    bad = bad_checkpoint(tmp_path, "wrong_shape")
    raw = {"network": {"layers": [64, 8, 10]}}
    with pytest.raises(ConfigError, match=r"grid point train.init_from=.*'2.weight'"):
        expand(raw, [parse_grid(f"train.init_from={ckpt},{bad}")])
    (point,) = expand(raw, [parse_grid(f"train.init_from={ckpt}")])
    assert point.config.train.init_from == str(ckpt)
    before = config_key(point.config)
    torch.save(mlp(64, 8, 10, flatten=False).double().state_dict(), ckpt)
    assert config_key(point.config) != before  # other weights at the same path: another point
