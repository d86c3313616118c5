"""Online Normalization in the bit-exact integer model (docs/numerics.md, "Online
Normalization"): samples and evaluation in 16-bit formats against ``tests/int_reference.py``,
the configurations the model refuses, training next to the float model, the CLI.

The one-step comparison in every rounding and overflow mode and the zero-delay schedule sample by
sample are ``tests/test_fixed_conv.py``'s (its networks ``1d-online`` and ``2d-online``).
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from int_reference import RefConvStage
from test_fixed_arith import check, codes, counts_of
from test_fixed_conv import (
    ONLINE_STATE,
    _conv,
    _online,
    compare,
    conv_raw,
    model_sample,
    online_state,
    random_states,
    ref_conv_net,
    ref_sample,
)

from golden.fixed_arith import FixedArithmetic
from pbhw.cli import main
from pbhw.core.config import ConfigError, from_dict
from pbhw.core.datasets import Dataset
from pbhw.core.datasets import load as load_dataset
from pbhw.core.plan import derive_plan
from pbhw.core.weights import initial_weights
from pbhw.tools.train import train

#: 16-bit formats (s16.10 activations, s16.13 weights and errors), stochastic rounding.
STOCHASTIC = {
    role: {"width": 16, "frac": frac, "rounding": "stochastic"}
    for role, frac in (("activation", 10), ("weight", 13), ("error", 13), ("gradient", 13))
}


def wide_raw() -> dict:
    """Two Online Normalization stages over 64 and 32 positions: 64^2 times a variance of 1 at
    20 fractional bits is 2^32, so the reciprocal square root's ``J`` starts negative."""
    return {
        "seed": 5,
        "network": {
            "input": [2, 64],
            "loss": "softmax_ce",
            "layers": [
                _online(4, 3, padding=1, alpha_fwd=0.9, alpha_bkw=0.8, clamp=3.0),
                _online(4, 3, stride=2, padding=1, alpha_bkw=0.7, pool="global_avg", clamp=2.0),
                {"type": "dense", "units": 3},
            ],
        },
        "optimizer": {"lr": 0.05, "momentum": 0.9, "reference_batch": 1},
        "formats": STOCHASTIC,
        "train": {"arith": "fixed"},
    }


def test_samples_and_evaluation_in_wide_formats_match_the_reference():
    """Six samples one after another (every delay 0), every value and the state compared with
    the reference; then the evaluation of a batch: the reference's outputs, the state as it
    was, no counts."""
    plan = derive_plan(from_dict(wide_raw()))
    arith, ref = FixedArithmetic(plan), ref_conv_net(plan)
    states, rstates = [], []
    for sp, params, rs in zip(plan.stages, initial_weights(plan), ref.stages, strict=True):
        state = arith.init_conv_state(sp, params) if sp.conv else arith.init_state(sp, *params)
        states.append(state)
        rstates.append({"w": codes(state.w)[0], "v": codes(state.v)[0], "w_prev": None})
        if sp.conv:
            rstates[-1]["online"] = rs.online_init()
            assert online_state(state) == rs.online_init()
    first: RefConvStage = ref.stages[0]
    m, fa = first.positions, first.f("activation")
    assert first.online_init()["V"][0] + m * m * first.eps_code() >= 2**32  # J < 0
    gen = torch.Generator().manual_seed(0)
    for t in range(6):
        xf = (torch.rand(128, generator=gen, dtype=torch.float64) * 3 - 1).tolist()
        want = ref_sample(ref, plan, rstates, xf, t % 3, t)
        got = model_sample(arith, plan, states, xf, t % 3, t)
        compare(got, want)
    assert counts_of(arith) == ref.count_dict()
    moved = online_state(states[0])
    assert all(v != m * m * 2 ** (2 * fa) for v in moved["V"]) and any(moved["U"])
    before = [online_state(s) for s in states[:2]]
    counted = arith.saturation_counts()
    xe = (torch.rand(4, 128, generator=gen, dtype=torch.float64) * 3 - 1).tolist()
    out = arith.evaluate(plan.stages, states, torch.tensor(xe, dtype=torch.float64))
    check("evaluate", out, [ref.evaluate(rstates, xe)])
    assert [online_state(s) for s in states[:2]] == before
    assert [rst["online"] for rst in rstates[:2]] == before
    assert arith.saturation_counts() == counted


@pytest.mark.parametrize("ovf", ["saturate", "wrap"])
def test_online_norm_roundings_overflow_and_are_counted(ovf):
    """Random states in narrow formats (``P`` and ``U`` at times next to their 44-bit limits):
    every rounding of Online Normalization overflows in some step, its counter says so, and
    everything, the state included, equals the reference."""
    seen: set[str] = set()
    for seed in range(4):
        raw = conv_raw("1d-online", case=f"half_even-{ovf}")
        plan = derive_plan(from_dict(raw))
        arith, ref = FixedArithmetic(plan), ref_conv_net(plan)
        states, rstates = random_states(plan, arith, ref, random.Random(seed))
        for step in range(2):
            xf = [random.Random(seed * 7 + step).uniform(-6, 6) for _ in range(24)]
            compare(
                model_sample(arith, plan, states, xf, 1, step),
                ref_sample(ref, plan, rstates, xf, 1, step),
            )
        assert counts_of(arith) == ref.count_dict()
        seen |= {key.split()[2] for key in ref.count_dict()}
    roles = {"norm", "normalized", "norm_error", "norm_group", "norm_backward", "norm_online"}
    assert roles <= seen, roles - seen


def test_the_state_wraps_at_44_bits():
    """``P`` and ``U`` at their 44-bit limit. Saturating, the compensation read from them
    (``rho_v``, ``rho_u``, saturated at the top of ``Cv`` and ``E''``) pulls them back down.
    Wrapping, ``rho`` wraps too, and a sample's sum takes them past the limit: wrapped, counted
    under ``norm_online``, as the reference."""
    for ovf in ("saturate", "wrap"):
        raw = conv_raw("1d-online", case=f"half_even-{ovf}")
        plan = derive_plan(from_dict(raw))
        arith, ref = FixedArithmetic(plan), ref_conv_net(plan)
        states, rstates = random_states(plan, arith, ref, random.Random(3))
        top = 2**43 - 1
        for k in ONLINE_STATE:  # P and U of every channel of stage 1 at the top
            values = [top] * 4 if k in "PU" else rstates[0]["online"][k]
            rstates[0]["online"][k] = list(values)
            states[0].online[k][0] = values
        for step in range(3):
            xf = [random.Random(step).uniform(-6, 6) for _ in range(24)]
            compare(
                model_sample(arith, plan, states, xf, 0, step),
                ref_sample(ref, plan, rstates, xf, 0, step),
            )
        assert counts_of(arith) == ref.count_dict()
        final = online_state(states[0])
        if ovf == "saturate":
            assert ref.state_overflows == 0
            assert all(v <= top for k in "PU" for v in final[k]), final
            assert any(v < top for k in "PU" for v in final[k]), final
        else:
            assert ref.state_overflows > 0 and counts_of(arith)["stage 1 norm_online"] > 0
            assert any(v < 0 for k in "PU" for v in final[k]), final


# ------------------------------------------------------------------------------------------
# Configurations the model refuses


def _refused_raw(**online_keys) -> dict:
    raw = {
        "seed": 0,
        "network": {
            "input": [2, 12],
            "loss": "softmax_ce",
            "layers": [
                _conv(4, 3, padding=1),
                _online(4, 3, padding=1, **online_keys),
                {"type": "dense", "units": 3},
            ],
        },
        "train": {"arith": "fixed"},
    }
    return raw


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"alpha_fwd": 1 - 1e-9}, "stage 2: online norm's alpha_fwd"),
        ({"alpha_bkw": 1 - 1e-9}, "stage 2: online norm's alpha_bkw"),
        ({"alpha_fwd": 1e-9}, "stage 2: online norm's alpha_fwd"),
        ({"alpha_bkw": 2.0**-18}, "stage 2: online norm's alpha_bkw"),
        ({"clamp": 1e-4}, "stage 2: online norm's clamp"),  # 0.1 codes of s16.10
    ],
)
def test_decays_and_clamps_without_a_code_are_refused(keys, message):
    """A decay within 2^-17 of 0 or 1 makes ``a`` or ``b`` the code 0, a clamp below half a code
    of ``A`` the bound 0: refused when the model is built, naming the stage. Just inside, fine."""
    with pytest.raises(ConfigError, match=message):
        FixedArithmetic(derive_plan(from_dict(_refused_raw(**keys))))
    key = next(iter(keys))
    inside = {"alpha_fwd": 1 - 2.0**-16, "alpha_bkw": 2.0**-16, "clamp": 2.0**-10}[key]
    FixedArithmetic(derive_plan(from_dict(_refused_raw(**{key: inside}))))


def spec_widths(m: int, wa: int, fa: int, we: int, ww: int, b_f: int, b_b: int) -> dict:
    """Every sum of "Widths of Online Normalization" (docs/numerics.md) in its order, as the
    signed width of its largest magnitude (``a``, ``e``, ``w``: the largest magnitudes of
    ``A'``, ``E_l``, ``W_l``; ``H_o W_o = m``)."""
    a, e, w = 2 ** (wa - 1), 2 ** (we - 1), 2 ** (ww - 1)
    eps = round(1e-5 * 2 ** (2 * fa))
    sums = {
        "variance": m * m * (4 * a * a + eps),
        "normalization": 2 * m * a * 2**24,
        "mean": b_f * 2 * m * a * 2**8,
        "deviation": b_f * (2 * m * a + 1) ** 2,
        "variance update": b_f * 9 * m * m * (a + 1) ** 2,
        "scale": a * w + w * 2**fa,
        "compensation": e * 2 ** (2 * fa) + 2 ** (we + wa - 1) * a,
        "normalized error": m * e * 2**16,
        "state decay": b_b * 2**43,
        "state": 2**43 + m * e * a,
        "scale gradient": m * e * a,
    }
    return {k: v.bit_length() + 1 for k, v in sums.items()}


@pytest.mark.parametrize("width, name", [(28, "variance"), (24, "deviation")])
def test_online_norm_sums_wider_than_the_limit_are_refused(width, name):
    """Activations of ``width`` bits over 12 positions: the first sum of the list in
    docs/numerics.md that needs more than 62 bits is named with its width (28 bits: the
    variance; 24 bits: ``b_f`` times the squared deviation); 23 bits are accepted."""
    raw = _refused_raw(alpha_fwd=0.999)
    raw["formats"] = {
        "activation": {"width": width, "frac": 12},
        "weight": {"width": 16, "frac": 13},
        "error": {"width": 16, "frac": 13},
    }
    a_f, a_b = round(0.999 * 2**16), round(0.99 * 2**16)
    decays = (2**16 - a_f, 2**16 - a_b)  # b_f, b_b
    widths = spec_widths(12, width, 12, 16, 16, *decays)
    assert [k for k, bits in widths.items() if bits > 62][0] == name, widths
    message = f"stage 2: online norm's {name} sum needs {widths[name]} bits"
    with pytest.raises(ConfigError, match=message):
        FixedArithmetic(derive_plan(from_dict(raw)))
    raw["formats"]["activation"]["width"] = 23
    assert max(spec_widths(12, 23, 12, 16, 16, *decays).values()) <= 62
    FixedArithmetic(derive_plan(from_dict(raw)))


# ------------------------------------------------------------------------------------------
# Training


def _cnn(dataset: str = "mnist1d", **train_keys) -> dict:
    """Three Online Normalization stages of 8 channels (average pooling after the last), a
    dense classifier, PB with LWP and SC, 16-bit default formats."""
    return {
        "seed": 0,
        "network": {
            "input": [1, 40],
            "loss": "softmax_ce",
            "layers": [
                _online(8, 5, padding=2, alpha_fwd=0.99),
                _online(8, 5, stride=2, padding=2, alpha_fwd=0.99),
                _online(8, 3, padding=1, alpha_fwd=0.99, pool="avg"),
                {"type": "dense", "units": 10},
            ],
        },
        "optimizer": {"lr": 0.1, "momentum": 0.9, "reference_batch": 32},
        "train": {"arith": "fixed", "epochs": 1, "dataset": dataset, **train_keys},
    }


def test_an_online_norm_cnn_trains_in_fixed_point_as_in_float():
    """1000 mnist1d samples, one epoch (about two seconds): 0.329 test accuracy measured in
    fixed point, 0.328 in float (chance 0.1; over seeds 0 to 7 the fixed-point runs gave 0.31
    to 0.37 and were within 2.4 points of the float ones)."""
    full = load_dataset("mnist1d")
    data = Dataset(
        "mnist1d", full.x_train[:1000], full.y_train[:1000], full.x_test, full.y_test, 10,
        full.shape,
    )  # fmt: skip
    raw = _cnn()
    fixed = train(from_dict(raw), dataset=data)
    raw["train"]["arith"] = "float"
    floating = train(from_dict(raw), dataset=data)
    assert fixed.test_accuracy > 0.25, fixed.test_accuracy
    assert abs(fixed.test_accuracy - floating.test_accuracy) < 0.05, (
        fixed.test_accuracy,
        floating.test_accuracy,
    )


def _toml(raw: dict) -> str:
    def value(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, bool):
            return "true" if v else "false"
        return f'"{v}"' if isinstance(v, str) else repr(v)

    lines = [f"seed = {raw['seed']}"]
    for section in ("network", "optimizer", "train"):
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in raw[section].items()]
    return "\n".join(lines) + "\n"


def test_cli_checks_and_trains_an_online_norm_config_in_fixed_point(tmp_path):
    """``pbhw check`` and ``pbhw train`` of a fixed-point Online Normalization config (300
    mnist1d samples in an npz file) exit 0; a decay the model cannot hold exits 2 with one
    error line naming the stage."""
    full = load_dataset("mnist1d")
    data = tmp_path / "few.npz"
    np.savez(
        data,
        X=full.x_train[:300].reshape(300, 1, 40).numpy(),
        y=full.y_train[:300].numpy(),
        X_test=full.x_test[:100].reshape(100, 1, 40).numpy(),
        y_test=full.y_test[:100].numpy(),
    )
    path = tmp_path / "on.toml"
    path.write_text(_toml(_cnn(f"npz:{data}")))
    runner = CliRunner()
    result = runner.invoke(main, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert "+onlinenorm" in result.output and "arithmetic fixed" in result.output
    out = tmp_path / "run.json"
    result = runner.invoke(main, ["train", str(path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "fixed arithmetic" in result.output and "test accuracy" in result.output
    # the overflows' line: the run's total as the JSON has it, whenever there are any
    total = json.loads(out.read_text())["saturation_total"]
    lines = [line for line in result.output.splitlines() if line.startswith("overflows:")]
    assert total > 0 and len(lines) == 1, result.output  # 300 samples do overflow
    assert all(
        line.startswith(f"overflows: {total:,} values saturated or wrapped (") for line in lines
    )
    raw = _cnn(f"npz:{data}")
    raw["network"]["layers"][1]["alpha_bkw"] = 1 - 1e-9
    path.write_text(_toml(raw))
    result = runner.invoke(main, ["check", str(path)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stage 2: online norm's alpha_bkw" in errors[0], result.output
