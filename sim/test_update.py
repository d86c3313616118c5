"""UpdateUnit in Verilog against golden.fixed_arith: every prediction form, with and without Spike
Compensation, with nearest and stochastic rounding.

One design holds one UpdateUnit per variant, all fed the same element stream (every ``(dz, x)``
pair of a K x K stage with random and extreme ``w``, ``v``), so one build covers them all. The
golden outputs and the stimulus helpers are those of ``tests/test_rtl_update.py``.
"""

import itertools

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from test_rtl_update import SEED, STEP, K, codes_of, golden, make_plan, make_unit, role

from golden.fixed_arith import threefry_words
from pbhw.core.constants import stream_id
from pbhw.tools.toolchain import SIMULATORS, verilog_of
from rtl_gen.update import ROUNDING_POINTS
from sim.codes import fields_of, pack_fields, unpack_fields
from sim.runner import build_or_skip, run_stream
from sim.shell import StreamShell

STOCHASTIC = {
    "gradient": role(8, 6, "stochastic"),
    "velocity": role(8, 6, "stochastic"),
    "weight": role(8, 5, "stochastic"),
}
#: variant name -> make_plan arguments; the formats' widths are the same in all of them.
VARIANTS = {
    f"{'sc' if sc else 'no_sc'}_{prediction}_{rounding}": {
        "spike_compensation": sc,
        "prediction": prediction,
        **(STOCHASTIC if rounding == "stochastic" else {}),
    }
    for sc, prediction, rounding in itertools.product(
        (True, False), ("none", "velocity", "weight_difference"), ("nearest", "stochastic")
    )
}
INPUTS = ("dz", "x", "w", "v", "w_prev")
OUTPUTS = ("g", "v_new", "w_new", "w_hat", "saturated")


class UpdateBank(wiring.Component):
    """One UpdateUnit per variant, all on the same inputs; the outputs of the unit called
    ``name`` are ``{name}_{port}``."""

    def __init__(self, units):
        self._units = units
        first = next(iter(units.values()))
        members = {name: In(first.signature.members[name].shape) for name in INPUTS[:4]}
        members["w_prev"] = In(first.signature.members["w"].shape)  # only some units read it
        members.update({f"random_{point}": In(32) for point in ROUNDING_POINTS})
        for name, unit in units.items():
            for port in OUTPUTS:
                members[f"{name}_{port}"] = Out(unit.signature.members[port].shape)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        for name, unit in self._units.items():
            m.submodules[name] = unit
            for port, member in unit.signature.members.items():
                if member.flow is In:
                    m.d.comb += getattr(unit, port).eq(getattr(self, port))
                elif port in OUTPUTS:  # v_next, v_new earlier, is checked in tests/
                    m.d.comb += getattr(self, f"{name}_{port}").eq(getattr(unit, port))
        return m


@pytest.mark.parametrize("sim", SIMULATORS)
def test_every_variant_matches_golden_model(sim):
    plans = {name: make_plan(**args) for name, args in VARIANTS.items()}
    shell = StreamShell(UpdateBank({name: make_unit(plan) for name, plan in plans.items()}))
    build = build_or_skip(verilog_of(shell, "update_bank"), "update_bank", sim=sim)
    in_fields = fields_of(shell.i.payload.shape())
    out_fields = fields_of(shell.o.payload.shape())

    fm = next(iter(plans.values())).stages[0].formats
    rng = np.random.default_rng(11)
    dz, x = codes_of(fm.error.format, K, rng), codes_of(fm.activation.format, K, rng)
    w = codes_of(fm.weight.format, K * K, rng)
    v = codes_of(fm.velocity.format, K * K, rng)
    w_prev = codes_of(fm.weight.format, K * K, rng)[::-1].copy()
    index = np.arange(K * K)  # element n is (output n // K, input n % K)
    words = {p: threefry_words(SEED, stream_id(1, p), STEP, index) for p in ROUNDING_POINTS}
    inputs = [
        {
            "dz": int(dz[n // K]),
            "x": int(x[n % K]),
            "w": int(w[n]),
            "v": int(v[n]),
            "w_prev": int(w_prev[n]),
            **{f"random_{p}": int(words[p][n]) for p in ROUNDING_POINTS},
        }
        for n in index
    ]
    outputs = [{} for _ in index]
    counts = {}
    for name, plan in plans.items():
        values, counts[name] = golden(plan, dz, x, w, v, w_prev)
        for port, codes in values.items():
            for n in index:
                outputs[n][f"{name}_{port}"] = int(codes[n])
        for n in index:
            outputs[n][f"{name}_saturated"] = 0  # compared as counts below

    received = run_stream(
        build,
        "every_variant",
        inputs=[pack_fields(i, in_fields) for i in inputs],
        expected=[pack_fields(o, out_fields) for o in outputs],
        input_fields=in_fields,
        output_fields=out_fields,
        compare=[f.name for f in out_fields if not f.name.endswith("_saturated")],
    )
    # The golden model counts saturated elements per rounding point; so does the RTL's flag word.
    for name in plans:
        flags = [unpack_fields(word, out_fields)[f"{name}_saturated"] for word in received]
        got = {p: sum((f >> bit) & 1 for f in flags) for bit, p in enumerate(ROUNDING_POINTS)}
        assert got == counts[name], name
