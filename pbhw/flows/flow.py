"""``pbhw flow``: the main job, from a config to an HLS-style report of a training accelerator.

Steps, each writing its own file into the output directory:

1. train in the hardware's fixed-point arithmetic (the bit-exact model) on the config's dataset,
   and a float SGD baseline at the reference batch (``train_fixed.json``, ``train_sgd.json``);
2. generate the Verilog (``rtl/``, as ``pbhw generate``): the one elaboration of the design,
   whose Verilog the next two steps take as it is;
3. verify a short run of the RTL bit for bit against the golden model (``verify.json``);
4. synthesise, place and route for the config's device (``estimate.json``);
5. write ``report.md`` with ``training.png`` and ``resources.png``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pbhw.core.config import Config
from pbhw.core.io import write_json
from pbhw.flows.report import render_flow_report
from pbhw.tools.estimate import estimate
from pbhw.tools.train import train
from pbhw.tools.verify import verify
from rtl_gen.generate import generate

__all__ = ["run_flow"]

Progress = Callable[[str], None]


def _training_plot(path: Path, fixed, sgd, name: str) -> None:
    from matplotlib.figure import Figure  # 0.3 s to import: only the flow's plots need it

    fig = Figure(figsize=(6.4, 3.8), dpi=120)
    ax = fig.add_subplot()
    for result, label, style in (
        (fixed, "PB, hardware fixed point (bit-exact)", "o-"),
        (sgd, f"SGD float, batch {sgd.config['optimizer']['reference_batch']}", "s--"),
    ):
        epochs = [h.epoch for h in result.history]
        ax.plot(epochs, [100 * h.test_accuracy for h in result.history], style, label=label)
    from matplotlib.ticker import MaxNLocator  # (as above)

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{name}: training curves")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def _resources_plot(path: Path, estimate, name: str) -> None:
    from matplotlib.figure import Figure  # 0.3 s to import: only the flow's plots need it

    keys = [k for k in ("lut", "ff", "dsp", "bram_bits") if k in estimate.used]
    share = [100 * estimate.used[k] / max(1, estimate.available[k]) for k in keys]
    fig = Figure(figsize=(6.4, 3.2), dpi=120)
    ax = fig.add_subplot()
    bars = ax.barh(keys, share, color=["#c44" if s > 100 else "#48a" for s in share])
    for bar, k, s in zip(bars, keys, share, strict=True):
        ax.text(
            min(s, 100) + 1,
            bar.get_y() + bar.get_height() / 2,
            f"{estimate.used[k]:,} / {estimate.available[k]:,} ({s:.0f}%)",
            va="center",
            fontsize=8,
        )
    ax.set_xlim(0, 140)
    ax.axvline(100, color="k", lw=0.8)
    ax.set_xlabel(f"% of {estimate.device}")
    routed = estimate.fmax_mhz is not None and not any(
        "stopped" in n or "yosys" in n.lower() for n in estimate.notes
    )
    source = "after place and route" if routed else "(Yosys counts)"
    ax.set_title(f"{name}: resources {source}")
    fig.tight_layout()
    fig.savefig(path)


def run_flow(
    config: Config,
    out_dir: Path,
    *,
    verify_samples: int = 100,
    simulator: str = "verilator",
    progress: Progress | None = None,
    pnr_timeout: float | None = None,
    pnr_seed: int | None = None,
) -> dict[str, Any]:
    """Run every step; returns the numbers the report shows. ``pnr_seed`` is nextpnr's
    placement seed (None: nextpnr's own), which the report names."""

    say = progress or (lambda message: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - start
        return value

    fixed_cfg = config.replace({"train.arith": "fixed"})
    sgd_cfg = config.replace({"train.arith": "float", "optimizer.algorithm": "sgd"})
    say(f"1/5 training {config.name} in fixed point (bit-exact) on {config.train.dataset} ...")
    fixed = timed("train_fixed", lambda: train(fixed_cfg))
    write_json(out_dir / "train_fixed.json", fixed.to_json())
    say(f"    test accuracy {100 * fixed.test_accuracy:.2f} %; float SGD baseline ...")
    sgd = timed("train_sgd", lambda: train(sgd_cfg))
    write_json(out_dir / "train_sgd.json", sgd.to_json())
    say(f"    baseline {100 * sgd.test_accuracy:.2f} %")

    say("2/5 generating Verilog ...")
    generated = timed("generate", lambda: generate(config, out_dir / "rtl", force=True))
    manifest = generated.manifest

    say(f"3/5 verifying {verify_samples} samples against the golden model on {simulator} ...")
    checked = timed(
        "verify",
        lambda: verify(config, samples=verify_samples, simulator=simulator, generated=generated),
    )
    write_json(out_dir / "verify.json", checked.to_json())
    say(f"    {checked.summary()}")

    say(f"4/5 synthesis and place-and-route for {config.hardware.device} ...")
    est = timed(
        "estimate",
        lambda: estimate(
            config,
            progress=lambda m: say(f"    {m}"),
            pnr_timeout=pnr_timeout,
            seed=pnr_seed,
            generated=generated,
        ),
    )
    write_json(out_dir / "estimate.json", est.to_json())
    fmax = "no Fmax" if est.fmax_mhz is None else f"Fmax {est.fmax_mhz:.1f} MHz"
    say(f"    {fmax}; fits: {est.fits}")

    say("5/5 writing the report ...")
    _training_plot(out_dir / "training.png", fixed, sgd, config.name)
    _resources_plot(out_dir / "resources.png", est, config.name)
    summary = {
        "config": config.to_dict(),
        "train_fixed": fixed.to_json(),
        "train_sgd": sgd.to_json(),
        "manifest": manifest.to_json(),
        "verify": checked.to_json(),
        "estimate": est.to_json(),
        "pnr_seed": pnr_seed,
        "timings": timings,
    }
    (out_dir / "report.md").write_text(render_flow_report(summary))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
