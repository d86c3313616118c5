"""manifest.json's stream layouts: a payload encoded with the design's Amaranth layout decodes to
the same values with nothing but the manifest's fields (as a host driver would)."""

import json
import random

import pytest

from pbhw.core.config import from_dict
from pbhw.core.manifest import Manifest, Payload
from rtl_gen.design import build_design
from rtl_gen.generate import manifest_of, top_name


@pytest.fixture(scope="module")
def built():
    config = from_dict(
        {
            "name": "layout",
            "network": {"layers": [5, 4, 3]},
            "optimizer": {"weight_prediction": "weight_difference"},
            "formats": {"activation": {"width": 9, "frac": 4}, "error": {"width": 11, "frac": 8}},
            "hardware": {"lanes": [3, 2]},
        }
    )
    design = build_design(config)
    design.discard()
    manifest = manifest_of(design, top=top_name(config))
    # only what manifest.json holds
    return design, Manifest.from_json(json.loads(json.dumps(manifest.to_json()))).streams


def decode(word: int, payload: Payload) -> dict:
    """A payload's values from its bits, with only the manifest's field descriptions."""

    def code(bits: int, width: int, signed: bool) -> int:
        return bits - (1 << width) if signed and bits >> (width - 1) else bits

    out = {}
    for f in payload.fields:
        bits = (word >> f.lsb) & ((1 << f.width) - 1)
        if f.count is None:
            out[f.name] = code(bits, f.width, f.signed)
        else:
            mask = (1 << f.element_width) - 1
            out[f.name] = [
                code((bits >> (i * f.element_width)) & mask, f.element_width, f.signed)
                for i in range(f.count)
            ]
    return out


def random_values(layout, rng: random.Random) -> dict:
    """Random values for every member of an Amaranth struct or array layout."""
    from amaranth.hdl import Shape
    from amaranth.lib import data

    def scalar(shape) -> int:
        s = Shape.cast(shape)
        low, high = (
            (-(1 << (s.width - 1)), (1 << (s.width - 1)) - 1) if s.signed else (0, 2**s.width - 1)
        )
        return rng.randint(low, high)

    def value(shape):
        if isinstance(shape, data.ArrayLayout):
            return [scalar(shape.elem_shape) for _ in range(shape.length)]
        return scalar(shape)

    if isinstance(layout, data.ArrayLayout):
        return {"row": value(layout)}
    return {name: value(field.shape) for name, field in layout}


def check_round_trip(layout, payload: Payload, seed: int) -> None:
    from amaranth.hdl import Shape
    from amaranth.lib import data

    rng = random.Random(seed)
    assert payload.width == Shape.cast(layout).width
    for _ in range(20):
        values = random_values(layout, rng)
        init = values["row"] if isinstance(layout, data.ArrayLayout) else values
        word = layout.const(init).as_value().value
        assert decode(word, payload) == values


def test_sample_and_result_payloads(built):
    design, streams = built
    net = design.network
    check_round_trip(net.samples.payload.shape(), streams.samples, 1)
    check_round_trip(net.results.payload.shape(), streams.results, 2)
    assert [f.name for f in streams.samples.fields] == ["bubble", "label", "x"]
    x = streams.samples.field("x")
    assert (x.count, x.element_width, x.signed) == (5, 9, True)
    assert streams.results.field("delta").element_width == 11


def test_inter_stage_payloads(built):
    design, streams = built
    assert [s.stage for s in streams.stages] == [1, 2]
    for stage, described in zip(design.network.stages, streams.stages, strict=True):
        check_round_trip(stage.fwd_o.payload.shape(), described.forward_out, 3)
        check_round_trip(stage.err_i.payload.shape(), described.error_in, 4)
    # stage 2 sends stage 1 its error: stage 1's error_in is stage 2's err_o
    check_round_trip(design.network.stages[1].err_o.payload.shape(), streams.stages[0].error_in, 5)


def test_debug_rows(built):
    design, streams = built
    debug = streams.debug
    net = design.network
    assert debug.widths == {
        "dbg_stage": len(net.dbg_stage),
        "dbg_mem": len(net.dbg_mem.as_value()),
        "dbg_addr": len(net.dbg_addr),
        "dbg_data": len(net.dbg_data),
    }
    assert dict(debug.memories) == {"w": 0, "v": 1, "w_prev": 2}
    for stage, rows in zip(net.stages, debug.rows, strict=True):
        assert set(rows) == {"w", "v", "w_prev"}
        assert rows["w"].field("row").count == stage.lanes
        assert rows["v"].width <= len(net.dbg_data)
        # the init files pack rows the way the debug port returns them
        init = stage.memory_init()["w"][0]
        codes = decode(init, rows["w"])["row"]
        flat = design.init[stage.plan.index - 1].reshape(-1)
        assert codes == [int(c) for c in flat[: stage.lanes]]
