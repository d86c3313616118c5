"""pbhw.core.config: loading, defaults, overrides, ``--set`` and every validation error."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from pbhw.core.config import (
    _LAYER_KEYS,
    DEFAULTS,
    ROLES,
    Algorithm,
    Arith,
    Config,
    ConfigError,
    Loss,
    WeightPrediction,
    apply_sets,
    from_dict,
    load,
)
from pbhw.core.fixed import FixedFormat, Overflow, Rounding

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mlp_digits.toml"


def error_of(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        from_dict(raw)
    return str(info.value)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


# defaults and the example


def test_empty_file_gives_every_default(tmp_path):
    cfg = load(write(tmp_path, ""))
    assert cfg.to_dict() == DEFAULTS
    assert (cfg.name, cfg.seed) == ("pbhw", 0)
    assert cfg.network.layers == (64, 32, 10)
    assert cfg.network.num_stages == 2
    assert (cfg.network.loss, cfg.network.bias) == (Loss.MSE, True)
    opt = cfg.optimizer
    assert (opt.algorithm, opt.lr, opt.momentum) == (Algorithm.PB, 0.1, 0.9)
    assert (opt.reference_batch, opt.batch_size) == (32, 1)
    assert opt.spike_compensation is True and opt.weight_stashing is False
    assert opt.weight_prediction is WeightPrediction.VELOCITY
    assert opt.prediction_horizon is None
    assert (cfg.hardware.lanes, cfg.hardware.device, cfg.hardware.clock_mhz) == (
        "auto",
        "ecp5-85k",
        100.0,
    )
    assert (cfg.train.dataset, cfg.train.epochs, cfg.train.arith) == ("digits", 10, Arith.FLOAT)


def test_default_formats_of_every_role():
    formats = from_dict({}).formats
    expected = {
        "activation": (16, 10),
        "weight": (16, 13),
        "error": (16, 13),
        "gradient": (16, 14),
        "velocity": (20, 14),
        "coefficient": (24, 22),
    }
    for role in ROLES:
        rf = formats.role(role)
        assert rf.format == FixedFormat(*expected[role], signed=True)
        assert (rf.rounding, rf.overflow) == (Rounding.HALF_EVEN, Overflow.SATURATE)
    assert formats.coefficient_shift is False


def test_partial_table_keeps_defaults_of_its_other_keys():
    cfg = from_dict({"optimizer": {"lr": 0.05}, "formats": {"weight": {"width": 12}}})
    assert cfg.optimizer.lr == 0.05
    assert cfg.optimizer.momentum == 0.9
    assert cfg.formats.weight.format == FixedFormat(12, 13)
    assert cfg.formats.activation.format == FixedFormat(16, 10)


def test_from_dict_does_not_modify_its_argument():
    raw = {"optimizer": {"lr": 0.05}}
    from_dict(raw)
    assert raw == {"optimizer": {"lr": 0.05}}


def test_example_config_loads():
    cfg = load(EXAMPLE)
    assert cfg.name == "mlp_digits"
    assert cfg.network.layers == (64, 32, 32, 10)
    assert cfg.network.num_stages == 3
    assert cfg.optimizer.algorithm is Algorithm.PB
    assert cfg.optimizer.reference_batch == 32
    assert cfg.hardware.clock_mhz == 100.0
    assert len(cfg.layer_formats) == 3


def test_integer_where_a_float_is_expected_is_accepted():
    cfg = from_dict({"optimizer": {"lr": 1, "momentum": 0}, "hardware": {"clock_mhz": 50}})
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.hardware.clock_mhz) == (1.0, 0.0, 50.0)
    assert isinstance(cfg.optimizer.lr, float)


def test_config_is_frozen():
    cfg = from_dict({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optimizer.lr = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.formats.weight.rounding = Rounding.FLOOR  # type: ignore[misc]


def test_to_dict_returns_an_independent_copy():
    cfg = from_dict({})
    d = cfg.to_dict()
    d["optimizer"]["lr"] = 5.0
    assert cfg.to_dict()["optimizer"]["lr"] == 0.1


def test_config_data_cannot_be_modified_through_the_config():
    cfg = from_dict({})
    with pytest.raises(TypeError):
        cfg.data["optimizer"]["lr"] = 5.0  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.data["seed"] = 5  # type: ignore[index]
    assert cfg.to_dict()["optimizer"]["lr"] == cfg.optimizer.lr


def test_equal_configs_are_equal_and_hash_alike():
    first, second = from_dict({"seed": 3}), from_dict({"seed": 3})
    assert first == second and hash(first) == hash(second)
    assert first != from_dict({"seed": 4})


# file errors


def test_missing_file_is_a_config_error(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load(path)
    assert str(path) in str(info.value)


def test_malformed_toml_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "[optimizer]\nlr = = 0.1\n")
    with pytest.raises(ConfigError, match="is not valid TOML") as info:
        load(path)
    assert str(path) in str(info.value)
    assert "line 2" in str(info.value)


def test_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b"name = '\xff'\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        load(path)


# unknown keys


@pytest.mark.parametrize(
    ("raw", "key", "suggestion"),
    [
        ({"sed": 1}, "'sed'", "'seed'"),
        ({"optimizer": {"momentun": 0.5}}, "'optimizer.momentun'", "'optimizer.momentum'"),
        ({"network": {"layer": [4, 2]}}, "'network.layer'", "'network.layers'"),
        ({"formats": {"weight": {"widht": 8}}}, "'formats.weight.widht'", "'formats.weight.width'"),
        ({"formats": {"wieght": {}}}, "'formats.wieght'", "'formats.weight'"),
        ({"hardware": {"lane": 2}}, "'hardware.lane'", "'hardware.lanes'"),
        ({"train": {"epoch": 2}}, "'train.epoch'", "'train.epochs'"),
    ],
)
def test_unknown_key_names_full_key_and_did_you_mean(raw, key, suggestion):
    message = error_of(raw)
    assert f"unknown config key {key}" in message
    assert f"did you mean {suggestion}?" in message


def test_unknown_key_without_a_close_match_lists_allowed_keys():
    message = error_of({"optimizer": {"zzzzzz": 1}})
    assert "'optimizer.zzzzzz'" in message
    assert "did you mean" not in message
    assert "algorithm, lr, momentum" in message


def test_shift_is_only_a_key_of_the_coefficient_format():
    assert from_dict({"formats": {"coefficient": {"shift": True}}}).formats.coefficient_shift
    assert "unknown config key 'formats.weight.shift'" in error_of(
        {"formats": {"weight": {"shift": True}}}
    )


def test_a_table_given_as_a_value_is_an_error():
    message = error_of({"optimizer": 0.1})
    assert "'optimizer' must be a table" in message
    assert "0.1" in message


# wrong types and values: the message names the full key, the value and what is allowed


@pytest.mark.parametrize(
    ("raw", "key", "shown", "allowed"),
    [
        ({"name": ""}, "name", "''", "a non-empty string"),
        ({"name": 3}, "name", "integer 3", "a non-empty string"),
        ({"seed": -1}, "seed", "-1", "an integer >= 0"),
        ({"seed": 2**32}, "seed", str(2**32), "an integer from 0 to 2**32 - 1"),
        ({"seed": 1.5}, "seed", "float 1.5", "an integer"),
        ({"network": {"bias": 1}}, "network.bias", "integer 1", "true or false"),
        ({"network": {"layers": []}}, "network.layers", "[]", "at least two positive integers"),
        ({"network": {"layers": [8]}}, "network.layers", "[8]", "at least two positive"),
        ({"network": {"layers": [8, 0, 2]}}, "network.layers", "[8, 0, 2]", "positive integers"),
        ({"network": {"layers": [8, -4, 2]}}, "network.layers", "[8, -4, 2]", "positive"),
        ({"network": {"layers": [8, 4.0, 2]}}, "network.layers", "[8, 4.0, 2]", "integers"),
        ({"network": {"layers": [8, True, 2]}}, "network.layers", "[8, True, 2]", "integers"),
        ({"network": {"layers": "8,2"}}, "network.layers", "'8,2'", "an array"),
        ({"network": {"layers": [8, 1]}}, "network.layers", "[8, 1]", "number of classes) is >= 2"),
        ({"network": {"loss": "ce"}}, "network.loss", "'ce'", "'mse', 'softmax_ce'"),
        ({"optimizer": {"algorithm": "adam"}}, "optimizer.algorithm", "'adam'", "'sgd', 'pb'"),
        ({"optimizer": {"lr": 0}}, "optimizer.lr", "integer 0", "a positive number"),
        ({"optimizer": {"lr": -0.1}}, "optimizer.lr", "-0.1", "a positive number"),
        ({"optimizer": {"lr": "fast"}}, "optimizer.lr", "string 'fast'", "a positive number"),
        ({"optimizer": {"lr": float("inf")}}, "optimizer.lr", "inf", "a positive number"),
        ({"optimizer": {"lr": float("nan")}}, "optimizer.lr", "nan", "a positive number"),
        ({"optimizer": {"momentum": 1.0}}, "optimizer.momentum", "1.0", "a number in [0, 1)"),
        ({"optimizer": {"momentum": 1}}, "optimizer.momentum", "integer 1", "[0, 1)"),
        ({"optimizer": {"momentum": -0.1}}, "optimizer.momentum", "-0.1", "[0, 1)"),
        ({"optimizer": {"momentum": True}}, "optimizer.momentum", "True", "[0, 1)"),
        ({"optimizer": {"reference_batch": 0}}, "optimizer.reference_batch", "0", ">= 1"),
        ({"optimizer": {"batch_size": 0}}, "optimizer.batch_size", "0", ">= 1"),
        (
            {"optimizer": {"spike_compensation": "yes"}},
            "optimizer.spike_compensation",
            "'yes'",
            "true or false",
        ),
        (
            {"optimizer": {"weight_prediction": "linear"}},
            "optimizer.weight_prediction",
            "'linear'",
            "'none', 'velocity', 'weight_difference'",
        ),
        (
            {"optimizer": {"prediction_horizon": -1}},
            "optimizer.prediction_horizon",
            "-1",
            '"auto" (the stage\'s delay) or an integer >= 0',
        ),
        (
            {"optimizer": {"prediction_horizon": "Auto"}},
            "optimizer.prediction_horizon",
            "'Auto'",
            '"auto"',
        ),
        (
            {"optimizer": {"prediction_horizon": 2.0}},
            "optimizer.prediction_horizon",
            "2.0",
            "an integer >= 0",
        ),
        ({"optimizer": {"weight_stashing": 0}}, "optimizer.weight_stashing", "0", "true or false"),
        (
            {"formats": {"weight": {"width": 1}}},
            "formats.weight.width",
            "integer 1",
            "an integer >= 2",
        ),
        (
            {"formats": {"weight": {"width": 0, "signed": False}}},
            "formats.weight.width",
            "integer 0",
            "an integer >= 1",
        ),
        (
            {"formats": {"weight": {"width": 63}}},
            "formats.weight.width",
            "63",
            "from 1 to 62 (2 to 62 when signed)",
        ),
        (
            {"formats": {"weight": {"width": 8.0}}},
            "formats.weight.width",
            "float 8.0",
            "an integer",
        ),
        ({"formats": {"error": {"frac": 1.5}}}, "formats.error.frac", "1.5", "an integer"),
        (
            {"formats": {"gradient": {"signed": "no"}}},
            "formats.gradient.signed",
            "'no'",
            "true or false",
        ),
        (
            {"formats": {"velocity": {"rounding": "round"}}},
            "formats.velocity.rounding",
            "'round'",
            "'floor', 'toward_zero', 'half_up', 'half_even', 'stochastic'",
        ),
        (
            {"formats": {"activation": {"overflow": "clamp"}}},
            "formats.activation.overflow",
            "'clamp'",
            "'wrap', 'saturate'",
        ),
        (
            {"formats": {"coefficient": {"shift": 1}}},
            "formats.coefficient.shift",
            "1",
            "true or false",
        ),
        ({"hardware": {"lanes": 0}}, "hardware.lanes", "0", '"auto", a positive integer'),
        ({"hardware": {"lanes": "max"}}, "hardware.lanes", "'max'", '"auto"'),
        ({"hardware": {"device": ""}}, "hardware.device", "''", "a non-empty string"),
        ({"hardware": {"clock_mhz": 0}}, "hardware.clock_mhz", "0", "a positive number (MHz)"),
        ({"train": {"dataset": 7}}, "train.dataset", "7", "a non-empty string"),
        ({"train": {"epochs": 0}}, "train.epochs", "0", "an integer >= 1"),
        ({"train": {"arith": "int"}}, "train.arith", "'int'", "'float', 'fixed'"),
    ],
)
def test_bad_value_names_key_value_and_allowed(raw, key, shown, allowed):
    message = error_of(raw)
    assert f"config key '{key}'" in message
    assert shown in message
    assert allowed in message


def test_unknown_rounding_name_suggests_the_closest():
    message = error_of({"formats": {"weight": {"rounding": "half_evn"}}})
    assert "config key 'formats.weight.rounding'" in message
    assert "'half_evn'" in message
    assert "did you mean 'half_even'?" in message


def test_unknown_overflow_name_suggests_the_closest():
    message = error_of({"formats": {"weight": {"overflow": "saturated"}}})
    assert "config key 'formats.weight.overflow'" in message
    assert "did you mean 'saturate'?" in message


def test_error_is_a_single_line():
    assert "\n" not in error_of({"optimizer": {"momentum": 2}})


@pytest.mark.parametrize("signed", [True, False])
def test_smallest_width_is_accepted(signed):
    width = 2 if signed else 1
    cfg = from_dict({"formats": {"weight": {"width": width, "signed": signed}}})
    assert cfg.formats.weight.format == FixedFormat(width, 13, signed)


def test_widest_width_and_negative_frac_are_accepted():
    cfg = from_dict({"formats": {"activation": {"width": 62, "frac": -3}}})
    assert cfg.formats.activation.format == FixedFormat(62, -3)


def test_momentum_zero_is_accepted():
    assert from_dict({"optimizer": {"momentum": 0.0}}).optimizer.momentum == 0.0


def test_seed_range_ends_are_accepted():
    assert from_dict({"seed": 0}).seed == 0
    assert from_dict({"seed": 2**32 - 1}).seed == 2**32 - 1


# optimizer rules


def test_pb_with_batch_size_other_than_one_is_rejected():
    message = error_of({"optimizer": {"batch_size": 8}})
    assert "config key 'optimizer.batch_size'" in message
    assert "must be 1 when optimizer.algorithm is 'pb'" in message
    assert "not 8" in message


def test_sgd_accepts_a_batch_size_above_one():
    cfg = from_dict({"optimizer": {"algorithm": "sgd", "batch_size": 8}})
    assert (cfg.optimizer.algorithm, cfg.optimizer.batch_size) == (Algorithm.SGD, 8)


def test_fixed_point_sgd_with_a_batch_above_one_is_rejected():
    """The fixed-point model trains the sgd reference one sample per update; with a batch it
    would silently run another algorithm (per-sample updates at the batch-scaled lr)."""
    message = error_of(
        {"optimizer": {"algorithm": "sgd", "batch_size": 32}, "train": {"arith": "fixed"}}
    )
    assert "config key 'optimizer.batch_size' must be 1 when train.arith is 'fixed'" in message
    assert "train.arith = 'float'" in message
    assert "not 32" in message
    cfg = from_dict({"optimizer": {"algorithm": "sgd"}, "train": {"arith": "fixed"}})
    assert (cfg.optimizer.batch_size, cfg.train.arith) == (1, Arith.FIXED)


@pytest.mark.parametrize(("given", "stored"), [("auto", None), (0, 0), (7, 7)])
def test_prediction_horizon_auto_or_integer(given, stored):
    cfg = from_dict({"optimizer": {"prediction_horizon": given}})
    assert cfg.optimizer.prediction_horizon == stored


@pytest.mark.parametrize("rounding", ["floor", "toward_zero", "half_up", "half_even"])
def test_coefficient_rounding_may_be_any_deterministic_mode(rounding):
    cfg = from_dict({"formats": {"coefficient": {"rounding": rounding}}})
    assert cfg.formats.coefficient.rounding is Rounding(rounding)


def test_coefficient_rounding_cannot_be_stochastic():
    message = error_of({"formats": {"coefficient": {"rounding": "stochastic"}}})
    assert "config key 'formats.coefficient.rounding'" in message
    assert "deterministic" in message
    assert "'stochastic'" in message


def test_other_roles_may_round_stochastically():
    cfg = from_dict({"formats": {"gradient": {"rounding": "stochastic"}}})
    assert cfg.formats.gradient.rounding is Rounding.STOCHASTIC


# hardware.lanes


@pytest.mark.parametrize(
    ("lanes", "stored"), [("auto", "auto"), (4, (4, 4, 4)), ([1, 2, 3], (1, 2, 3))]
)
def test_lanes_auto_integer_or_one_per_stage(lanes, stored):
    cfg = from_dict({"network": {"layers": [8, 6, 4, 2]}, "hardware": {"lanes": lanes}})
    assert cfg.hardware.lanes == stored


@pytest.mark.parametrize("lanes", [[1, 2], [1, 2, 3, 4], [1, 0, 3], [1, True, 3], True, 2.0])
def test_lanes_of_wrong_length_or_type_are_rejected(lanes):
    message = error_of({"network": {"layers": [8, 6, 4, 2]}, "hardware": {"lanes": lanes}})
    assert "config key 'hardware.lanes'" in message
    assert "an array of 3 positive integers (one per stage)" in message
    assert repr(lanes) in message


# [[overrides]]


def test_override_merges_onto_network_defaults_only_for_its_layer():
    cfg = from_dict(
        {
            "network": {"layers": [8, 6, 4, 2]},
            "formats": {"weight": {"frac": 10}},
            "overrides": [{"layer": 2, "formats": {"weight": {"width": 12}}}],
        }
    )
    first, second, third = cfg.layer_formats
    assert first == third == cfg.formats
    assert cfg.formats.weight.format == FixedFormat(16, 10)
    # width from the override, frac from the network-level [formats.weight]
    assert second.weight.format == FixedFormat(12, 10)
    assert second.weight.rounding is Rounding.HALF_EVEN
    for role in ROLES:
        if role != "weight":
            assert second.role(role) == cfg.formats.role(role)


def test_override_can_set_coefficient_shift_and_modes():
    cfg = from_dict(
        {
            "network": {"layers": [8, 4, 2]},
            "overrides": [
                {"layer": 1, "formats": {"coefficient": {"shift": True, "rounding": "floor"}}},
                {"layer": 2, "formats": {"error": {"overflow": "wrap"}}},
            ],
        }
    )
    assert cfg.layer_formats[0].coefficient_shift is True
    assert cfg.layer_formats[0].coefficient.rounding is Rounding.FLOOR
    assert cfg.layer_formats[1].coefficient_shift is False
    assert cfg.layer_formats[1].error.overflow is Overflow.WRAP


def test_override_without_formats_changes_nothing():
    cfg = from_dict({"network": {"layers": [8, 4, 2]}, "overrides": [{"layer": 1}]})
    assert cfg.layer_formats == (cfg.formats, cfg.formats)


def test_overrides_from_a_toml_array_of_tables(tmp_path):
    path = write(
        tmp_path,
        "[network]\nlayers = [8, 6, 4, 2]\n\n"
        "[[overrides]]\nlayer = 2\nformats.weight = {width = 12}\n\n"
        "[[overrides]]\nlayer = 3\n[overrides.formats.activation]\nfrac = 6\n",
    )
    cfg = load(path)
    assert cfg.layer_formats[1].weight.format == FixedFormat(12, 13)
    assert cfg.layer_formats[2].activation.format == FixedFormat(16, 6)
    assert cfg.layer_formats[0] == cfg.formats


@pytest.mark.parametrize(
    ("entry", "key", "fragment"),
    [
        ({"layer": 0}, "overrides.0.layer", "an integer >= 1, not integer 0"),
        ({"layer": 4}, "overrides.0.layer", "a stage from 1 to 3, not 4"),
        ({"layer": "2"}, "overrides.0.layer", "string '2'"),
        ({"formats": {}}, "overrides.0.layer", "is missing"),
        ({"layer": 1, "format": {}}, "overrides.0.format", "did you mean 'overrides.0.formats'?"),
    ],
)
def test_bad_override_entry_is_rejected(entry, key, fragment):
    message = error_of({"network": {"layers": [8, 6, 4, 2]}, "overrides": [entry]})
    assert f"'{key}'" in message
    assert fragment in message


def test_override_of_the_same_layer_twice_is_rejected():
    message = error_of(
        {"network": {"layers": [8, 6, 4, 2]}, "overrides": [{"layer": 2}, {"layer": 2}]}
    )
    assert "config key 'overrides.1.layer'" in message
    assert "stage 2 is overridden twice" in message


def test_unknown_key_inside_an_override_names_the_entry_and_suggests():
    message = error_of(
        {
            "network": {"layers": [8, 4, 2]},
            "overrides": [{"layer": 2, "formats": {"weight": {"widht": 8}}}],
        }
    )
    assert "unknown config key 'overrides.0.formats.weight.widht'" in message
    assert "did you mean 'overrides.0.formats.weight.width'?" in message


def test_bad_value_inside_an_override_names_the_entry():
    message = error_of(
        {
            "network": {"layers": [8, 4, 2]},
            "overrides": [{"layer": 2, "formats": {"coefficient": {"rounding": "stochastic"}}}],
        }
    )
    assert "'overrides.0.formats.coefficient.rounding'" in message
    message = error_of(
        {
            "network": {"layers": [8, 4, 2]},
            "overrides": [{"layer": 1, "formats": {"velocity": {"width": 1}}}],
        }
    )
    assert "'overrides.0.formats.velocity.width'" in message


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [({"layer": 1}, "must be an array of tables"), ([3], "'overrides.0' must be a table")],
)
def test_overrides_must_be_an_array_of_tables(overrides, fragment):
    assert fragment in error_of({"overrides": overrides})


# --set


@pytest.mark.parametrize(
    ("item", "path", "value"),
    [
        ("seed=12", ("seed",), 12),
        ("optimizer.lr=0.5", ("optimizer", "lr"), 0.5),
        ("optimizer.lr = 1e-3", ("optimizer", "lr"), 0.001),
        ("network.bias=false", ("network", "bias"), False),
        ("formats.coefficient.shift=true", ("formats", "coefficient", "shift"), True),
        ("network.layers=[8, 4]", ("network", "layers"), [8, 4]),
        ('name="quoted"', ("name",), "quoted"),
        ("name=bare", ("name",), "bare"),
        ("train.dataset=npz:/data/x.npz", ("train", "dataset"), "npz:/data/x.npz"),
        ("formats.weight={width = 12}", ("formats", "weight"), {"width": 12}),
    ],
)
def test_set_parses_toml_typed_values_at_dotted_keys(item, path, value):
    out = apply_sets({}, [item])
    node: Any = out
    for part in path:
        node = node[part]
    assert node == value
    assert type(node) is type(value)


def test_set_overrides_file_values_and_keeps_siblings():
    raw = {"optimizer": {"lr": 0.1, "momentum": 0.5}}
    out = apply_sets(raw, ["optimizer.lr=0.05"])
    assert out == {"optimizer": {"lr": 0.05, "momentum": 0.5}}
    assert raw == {"optimizer": {"lr": 0.1, "momentum": 0.5}}  # input untouched


def test_later_set_wins():
    assert apply_sets({}, ["seed=1", "seed=2"]) == {"seed": 2}


def test_set_indexes_list_items():
    raw = {"overrides": [{"layer": 1}, {"layer": 2, "formats": {"weight": {"width": 8}}}]}
    out = apply_sets(raw, ["overrides.0.layer=3", "overrides.1.formats.weight.width=10"])
    assert out["overrides"] == [{"layer": 3}, {"layer": 2, "formats": {"weight": {"width": 10}}}]
    assert apply_sets({"network": {"layers": [8, 4, 2]}}, ["network.layers.1=6"]) == {
        "network": {"layers": [8, 6, 2]}
    }


@pytest.mark.parametrize("index", ["2", "-1", "x"])
def test_set_with_a_bad_list_index_is_rejected(index):
    with pytest.raises(ConfigError, match=r"'overrides\.\S*' must index one of 2 list entries"):
        apply_sets({"overrides": [{"layer": 1}, {"layer": 2}]}, [f"overrides.{index}.layer=3"])


@pytest.mark.parametrize("item", ["optimizer.lr", "=3", "  =3", ""])
def test_set_without_key_or_equals_sign_is_rejected(item):
    with pytest.raises(ConfigError, match="--set takes KEY=VALUE") as info:
        apply_sets({}, [item])
    assert repr(item) in str(info.value)


def test_set_below_a_value_is_rejected():
    with pytest.raises(ConfigError, match="'seed' is a value, not a table"):
        apply_sets({"seed": 1}, ["seed.x=1"])


def test_set_below_a_list_item_that_is_a_value_is_a_config_error():
    with pytest.raises(ConfigError, match="'network.layers.0' is a value, not a table"):
        apply_sets({"network": {"layers": [8, 4, 2]}}, ["network.layers.0.x=1"])


def test_set_of_an_unknown_key_gets_a_did_you_mean():
    with pytest.raises(ConfigError) as info:
        load(EXAMPLE, ["optimizer.lrr=0.05"])
    assert "unknown config key 'optimizer.lrr'; did you mean 'optimizer.lr'?" in str(info.value)


def test_load_applies_sets_before_validation():
    cfg = load(EXAMPLE, ["optimizer.lr=0.05", "network.layers=[64, 16, 10]", "seed=7"])
    assert cfg.optimizer.lr == 0.05
    assert cfg.network.layers == (64, 16, 10)
    assert cfg.seed == 7
    with pytest.raises(ConfigError, match="config key 'optimizer.momentum'"):
        load(EXAMPLE, ["optimizer.momentum=1.5"])


def test_set_typed_value_is_validated_as_typed():
    # "true" is TOML boolean, not the string "true"
    with pytest.raises(ConfigError, match="'name' must be a non-empty string, not boolean True"):
        load(EXAMPLE, ["name=true"])


def test_set_can_add_an_override_entry_as_an_inline_table():
    cfg = load(EXAMPLE, ["overrides=[{layer = 2, formats = {weight = {width = 10}}}]"])
    assert cfg.layer_formats[1].weight.format == FixedFormat(10, 13)
    assert cfg.layer_formats[0] == cfg.formats


def test_config_keeps_the_resolved_dictionary():
    cfg = load(EXAMPLE, ["optimizer.lr=0.05"])
    data = cfg.to_dict()
    assert data["optimizer"]["lr"] == 0.05
    assert data["optimizer"]["batch_size"] == 1  # default filled in
    assert from_dict(data) == cfg
    assert isinstance(cfg, Config)


# docs/config.md stays in step with DEFAULTS


def documented_tables() -> dict[tuple[str, str], dict[str, list[str]]]:
    """``{(section heading, first header cell): {first cell: row cells}}`` of docs/config.md."""
    text = (EXAMPLE.parents[1] / "docs" / "config.md").read_text(encoding="utf-8")
    tables: dict[tuple[str, str], dict[str, list[str]]] = {}
    section, header = "", None
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if header is None:
            header = cells[0]
        elif not set(cells[0]) <= {"-"}:
            tables.setdefault((section, header), {})[cells[0].strip("`")] = cells
    return tables


def test_docs_list_every_key_with_its_default():
    docs = documented_tables()
    expected = {
        "Top level": {k: v for k, v in DEFAULTS.items() if not isinstance(v, (dict, list))},
        # network.input has no default (the shorthand's first entry, or required)
        "`[network]`": {**DEFAULTS["network"], "input": None},
        "`[optimizer]`": DEFAULTS["optimizer"],
        "`[formats.<role>]`": DEFAULTS["formats"]["coefficient"],
        "`[[overrides]]`": {"layer": None, "formats": {}},
        "`[hardware]`": DEFAULTS["hardware"],
        "`[train]`": DEFAULTS["train"],
    }
    assert {section for section, header in docs if header == "key"} == set(expected)
    for section, defaults in expected.items():
        rows = docs[section, "key"]
        assert set(rows) == set(defaults), section
        for key, default in defaults.items():
            cell = rows[key][2]
            if cell in ("see below", "(required)") or (section, key) == ("`[network]`", "input"):
                continue
            assert tomllib.loads(f"v = {cell.strip('`')}")["v"] == default, (section, key)
    layer_keys = docs["`[network]`", "layer key"]
    for kind, defaults in _LAYER_KEYS.items():
        for key, default in defaults.items():
            layer, cell = layer_keys[key][1], layer_keys[key][3]
            assert layer in ("both", kind.value), key
            if default is not None and key != "type":
                assert tomllib.loads(f"v = {cell.strip('`')}")["v"] == default, key
    assert set(layer_keys) == {key for keys in _LAYER_KEYS.values() for key in keys}
    widths = docs["`[formats.<role>]`", "role"]
    assert set(widths) == set(ROLES)
    for role in ROLES:
        _, width, frac, fmt = widths[role]
        default = DEFAULTS["formats"][role]
        assert (int(width), int(frac)) == (default["width"], default["frac"])
        assert fmt == str(FixedFormat(default["width"], default["frac"], default["signed"]))


# Config.replace


def test_replace_returns_a_validated_copy_with_dotted_keys_changed():
    cfg = load(EXAMPLE)
    new = cfg.replace({"train.arith": "fixed", "optimizer.lr": 0.05, "network.layers.1": 16})
    assert new.train.arith is Arith.FIXED and new.optimizer.lr == 0.05
    assert new.network.layers == (cfg.network.layers[0], 16, *cfg.network.layers[2:])
    assert new.to_dict()["train"]["epochs"] == cfg.to_dict()["train"]["epochs"]
    raw = cfg.to_dict()
    raw["train"]["arith"], raw["optimizer"]["lr"], raw["network"]["layers"][1] = "fixed", 0.05, 16
    assert new == from_dict(raw) and new.to_dict() == raw
    assert cfg.train.arith is not Arith.FIXED and cfg.optimizer.lr != 0.05  # unchanged
    assert cfg.replace({}) == cfg


def test_replace_takes_enum_members_tuples_and_list_entries():
    cfg = from_dict({"network": {"layers": [8, 4, 2]}, "overrides": [{"layer": 1}]})
    new = cfg.replace(
        {
            "optimizer.weight_prediction": WeightPrediction.NONE,
            "hardware.lanes": (2, 1),
            "overrides.0.formats.weight.width": 10,
        }
    )
    assert new.optimizer.weight_prediction is WeightPrediction.NONE
    assert new.hardware.lanes == (2, 1) and new.to_dict()["hardware"]["lanes"] == [2, 1]
    assert new.layer_formats[0].weight.format.width == 10
    assert new.layer_formats[1].weight.format.width == 16


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train.arit": "fixed"}, "unknown config key 'train.arit'; did you mean 'train.arith'?"),
        ({"trian.arith": "fixed"}, "unknown config key 'trian'; did you mean 'train'?"),
        ({"seed.x": 1}, "config key 'seed.x': 'seed' is a value, not a table"),
        ({"formats.weight": {"width": 8}}, "config key 'formats.weight' must name one value"),
        ({"overrides.0.layer": 1}, "config key 'overrides.0.layer': 'overrides.0' must index"),
        ({"train..arith": "fixed"}, "config key must be a dotted name such as 'train.arith', not"),
        ({3: "fixed"}, "config key must be a dotted name such as 'train.arith', not 3"),
    ],
)
def test_replace_refuses_a_bad_key_naming_it(changes, message):
    with pytest.raises(ConfigError) as info:
        from_dict({}).replace(changes)
    assert message in str(info.value)


def test_replace_refuses_a_bad_value_naming_the_key():
    cfg = from_dict({})
    with pytest.raises(ConfigError, match=r"config key 'train.arith' must be one of 'float', "):
        cfg.replace({"train.arith": "fixd"})
    with pytest.raises(ConfigError, match="config key 'optimizer.lr' must be a positive number"):
        cfg.replace({"optimizer.lr": -1})
    with pytest.raises(ConfigError, match="Config.replace takes a mapping"):
        cfg.replace("train.arith=fixed")  # type: ignore[arg-type]


def test_hardware_placer_is_one_of_nextpnr_s_placers_or_the_device_s():
    assert load(EXAMPLE).hardware.placer.value == "device"
    assert load(EXAMPLE, ['hardware.placer="heap"']).hardware.placer.value == "heap"
    with pytest.raises(ConfigError, match="hardware.placer") as info:
        load(EXAMPLE, ['hardware.placer="fast"'])
    assert "heap" in str(info.value) and "static" in str(info.value)
