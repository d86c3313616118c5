"""Fmax of the generated design against a lone multiply-accumulate on the same device.

A registered MAC (registered inputs ``a``, ``b``; ``acc <= acc + a*b``; registered output) is the
fastest thing a DSP datapath can clock at; the ratio design Fmax / MAC Fmax says how much of that
the generated training pipeline keeps. Both are placed and routed with :func:`pbhw.tools.estimate.
synthesize` (Yosys + nextpnr) on ``--device`` (default ecp5-85k).

    .venv/bin/python bench/fmax_ratio.py                    # MAC 16x16 + 40-bit acc, and design
    .venv/bin/python bench/fmax_ratio.py --seeds 1,2,3,4    # each routed once per nextpnr seed
    .venv/bin/python bench/fmax_ratio.py --mac-only         # only the MAC
    .venv/bin/python bench/fmax_ratio.py --placer heap      # nextpnr's HeAP, not the device's

The routed Fmax of a large design moves by several MHz from one placement seed to the next, so
one run is one sample. With ``--seeds`` every design is placed and routed once per seed
(``--jobs`` at a time); ``ratio`` is then the median design Fmax over the median MAC Fmax,
``ratio_best`` the best over the best (what a seed sweep before shipping a bitstream keeps),
and each entry lists its Fmax per seed.

It also reports the figures of merit (:func:`pbhw.core.figures.figures_of_merit`) per seed and at
the median (``figures``): the design's Fmax, its predicted cycles per sample, samples/s, the Fmax
of the MAC on the device's hard-multiplier primitive (the reference,
:mod:`pbhw.tools.reference`; the Yosys-mapped MAC on a device without one), the DSP-bound limit
(device DSP blocks x MAC Fmax / useful multiplies per sample) and the efficiency, samples/s over
that limit. ``--mac-only`` prints the DSP-bound limit alone.

Writes ``--out`` (default ``bench/results/fmax_ratio.json``) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pbhw.core.config import load  # noqa: E402
from pbhw.core.devices import load_device  # noqa: E402
from pbhw.core.figures import figures_of_merit, useful_multiplies  # noqa: E402
from pbhw.core.plan import derive_plan  # noqa: E402
from pbhw.tools.estimate import PLACERS, ToolError, synthesize  # noqa: E402
from pbhw.tools.reference import mac_verilog  # noqa: E402

CONFIG = ROOT / "examples" / "mlp_digits.toml"


# ---- HOOK: the full design -------------------------------------------------------------------
def design_verilog(config_path: Path) -> tuple[str, str, int]:
    """Verilog, top-module name and predicted cycles per sample of the design generated from
    ``config_path``.

    LEAD: this is the one place that knows how to get the generator's Verilog; it uses
    ``rtl_gen.design.build_design`` + ``rtl_gen.generate.verilog_text`` as they stand today.
    """
    try:
        from rtl_gen.design import build_design
        from rtl_gen.generate import top_name, verilog_text
    except ImportError as e:
        raise RuntimeError(f"the generator is not available ({e}); run with --mac-only") from None

    config = load(config_path)
    design = build_design(config)
    cycles = design.network.predicted_cycles_per_sample
    return verilog_text(design, top_name(config)), top_name(config), cycles


# ----------------------------------------------------------------------------------------------


def _seeds(text: str) -> list[int | None]:
    """``--seeds``: comma-separated positive integers; empty means nextpnr's own seed, once."""
    if not text:
        return [None]
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 1 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(
            f"--seeds must be distinct positive integers separated by commas, not {text!r}"
        )
    return seeds


def route(text: str, top: str, device, seeds, clock_mhz, jobs: int, placer=None) -> dict:
    """Place and route ``top`` once per seed (with nextpnr's ``placer``, None: the device
    file's); the first routed seed's estimate with every
    seed's Fmax (``fmax_by_seed``, None where the tools failed, with the reason in
    ``errors_by_seed``), their median (``fmax_median``) and best (``fmax_best``)."""

    def one(seed):
        label = "nextpnr's seed" if seed is None else f"seed {seed}"
        try:
            return synthesize(
                text,
                top,
                device,
                clock_mhz=clock_mhz,
                seed=seed,
                placer=placer,
                progress=lambda message: print(f"{top} ({label}): {message}", flush=True),
            )
        except ToolError as e:  # one seed's failure does not lose the others
            print(f"{top} ({label}): failed: {str(e).splitlines()[0]}", flush=True)
            return e

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        keys = ["default" if seed is None else str(seed) for seed in seeds]
        runs = dict(zip(keys, pool.map(one, seeds), strict=True))
    done = {key: run for key, run in runs.items() if not isinstance(run, ToolError)}
    if not done:
        raise ToolError(f"{top}: every seed failed; first: {next(iter(runs.values()))}")
    by_seed = {key: (None if key not in done else done[key].fmax_mhz) for key in runs}
    fmaxes = [f for f in by_seed.values() if f is not None]
    return {
        **next(iter(done.values())).to_json(),
        "fmax_by_seed": by_seed,
        "fmax_median": statistics.median(fmaxes) if fmaxes else None,
        "fmax_best": max(fmaxes) if fmaxes else None,
        "critical_path_by_seed": {key: run.critical_path for key, run in done.items()},
        "errors_by_seed": {
            key: str(run) for key, run in runs.items() if isinstance(run, ToolError)
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="ecp5-85k")
    parser.add_argument("--widths", default="16,16,40", help="MAC widths a,b,acc")
    parser.add_argument("--clock-mhz", type=float, default=None, help="P&R target")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--mac-only", action="store_true")
    parser.add_argument(
        "--seeds",
        type=_seeds,
        default=[None],
        help="nextpnr seeds, e.g. 1,2,3 (default: nextpnr's own seed, once)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="place-and-route runs at a time")
    parser.add_argument(
        "--placer",
        choices=("device", *PLACERS),
        default="device",
        help="nextpnr's placer for the MACs and the design (default: the device file's)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fmax_ratio.json")
    args = parser.parse_args(argv)

    device = load_device(args.device)
    placer = None if args.placer == "device" else args.placer
    width_a, width_b, width_acc = (int(w) for w in args.widths.split(","))
    # The MAC as Yosys maps it: the reference of the ratio. On a device whose multiplier the
    # generator instantiates, also the MAC built on that primitive with its input and output
    # registers, as the generator uses them (``ratio_primitive``): a stricter reference, since
    # then the product's path holds no fabric at all.
    macs = {}
    for primitive in dict.fromkeys([None, device.multiplier_primitive]):
        text, top = mac_verilog(width_a, width_b, width_acc, primitive)
        mac = route(text, top, device, args.seeds, args.clock_mhz, args.jobs, placer)
        name = primitive or "inferred"
        print(f"MAC {width_a}x{width_b}+{width_acc} ({name}) on {device.name}: Fmax {_fmaxes(mac)}")
        macs[name] = {"widths": [width_a, width_b, width_acc], **mac}
    result = {
        "device": device.name,
        "python": platform.python_version(),
        "seeds": ["default" if seed is None else seed for seed in args.seeds],
        "placer": args.placer,
        "mac": macs["inferred"],
        "mac_primitive": macs.get(device.multiplier_primitive or "", None),
        "design": None,
        "ratio": None,
        "ratio_best": None,
        "ratio_primitive": None,
        "useful_multiplies": useful_multiplies(derive_plan(load(args.config))),
        "dsp_available": device.resources["dsp"],
        "figures": None,
    }
    reference = result["mac_primitive"] or result["mac"]
    useful, dsp = result["useful_multiplies"], result["dsp_available"]
    if reference["fmax_median"]:
        bound = dsp * reference["fmax_median"] * 1e6 / useful
        print(
            f"DSP-bound limit {bound:,.0f} samples/s ({dsp} DSP blocks x MAC median "
            f"{reference['fmax_median']:.1f} MHz / {useful:,} useful multiplies per sample)"
        )
    if not args.mac_only:
        try:
            text, top, cycles = design_verilog(args.config)
        except (RuntimeError, NotImplementedError) as e:
            _write(args.out, result)
            sys.exit(f"design: {e}")
        design = route(text, top, device, args.seeds, args.clock_mhz, args.jobs, placer)
        result["design"] = {
            "config": str(args.config.relative_to(ROOT)),
            "cycles_per_sample": cycles,
            **design,
        }
        print(f"design Fmax {_fmaxes(design)}")
        result["figures"] = figures(design, reference, cycles, useful, dsp)
        for seed, f in result["figures"].items():
            print(_figures_line(seed, f))
        for key, ref, stat in (
            ("ratio", result["mac"], "fmax_median"),
            ("ratio_best", result["mac"], "fmax_best"),
            ("ratio_primitive", result["mac_primitive"], "fmax_median"),
        ):
            if design[stat] and ref and ref[stat]:
                result[key] = design[stat] / ref[stat]
                print(f"{key} {result[key]:.3f} ({stat[5:]} over {stat[5:]})")
    _write(args.out, result)
    return result


def figures(design: dict, mac: dict, cycles: int, useful: int, dsp: int) -> dict:
    """The figures of merit (:func:`pbhw.core.figures.figures_of_merit`) per seed, the design
    against the MAC routed with the same seed, and at the medians (key ``median``)."""
    pairs = {seed: (f, mac["fmax_by_seed"].get(seed)) for seed, f in design["fmax_by_seed"].items()}
    pairs["median"] = (design["fmax_median"], mac["fmax_median"])
    return {
        seed: figures_of_merit(
            fmax_mhz=fmax,
            cycles_per_sample=cycles,
            useful=useful,
            dsp_blocks=dsp,
            mac_fmax_mhz=mac_fmax,
        ).to_json()
        for seed, (fmax, mac_fmax) in pairs.items()
        if fmax
    }


def _figures_line(seed: str, f: dict) -> str:
    where = "median" if seed == "median" else f"seed {seed}"
    line = (
        f"{where}: Fmax {f['fmax_mhz']:.1f} MHz, {f['cycles_per_sample']} cycles/sample, "
        f"{f['samples_per_second']:,.0f} samples/s"
    )
    if f["efficiency"] is None:
        return line + " (no MAC Fmax for this seed)"
    return line + (
        f"; MAC {f['mac_fmax_mhz']:.1f} MHz, DSP-bound limit {f['dsp_bound']:,.0f} samples/s, "
        f"efficiency {f['efficiency']:.3f}"
    )


def _fmaxes(entry: dict) -> str:
    runs = ", ".join(
        f"{'-' if f is None else f'{f:.1f}'} (seed {seed})"
        for seed, f in entry["fmax_by_seed"].items()
    )
    if len(entry["fmax_by_seed"]) == 1 or entry["fmax_median"] is None:
        return runs.replace(" (seed default)", " MHz")
    median = entry["fmax_median"]
    return f"{runs} MHz; median {median:.1f}, best {entry['fmax_best']:.1f}"


def _write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
