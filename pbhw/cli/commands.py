"""The ``pbhw`` commands on one config: check, train, generate, verify, estimate, flow."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from pbhw.cli.common import (
    UserError,
    config_argument,
    init_from_option,
    lanes_text,
    load_config,
    pnr_seed_option,
    pnr_timeout_seconds,
    progress_console,
    result_console,
    say,
    set_option,
    simulator_option,
    train_sets,
    user_errors,
    warn,
)
from pbhw.core.config import ROLES, Arith, ConstantProducts, Norm
from pbhw.core.datasets import load as load_dataset
from pbhw.core.io import check_output_dir, check_output_file, write_json
from pbhw.core.plan import Coefficient, derive_plan, online_constants
from pbhw.core.torch_io import check_exportable, read_checkpoint, write_state_dict
from pbhw.flows.flow import run_flow
from pbhw.tools.check import STAGE_COLUMNS, check_config, stage_rows
from pbhw.tools.estimate import critical_path_text
from pbhw.tools.estimate import estimate as run_estimate
from pbhw.tools.train import train as run_training
from pbhw.tools.verify import check_waves_file
from pbhw.tools.verify import verify as run_verify
from pbhw.tools.verify import verify_epochs as run_verify_epochs
from rtl_gen.generate import generate as run_generate

__all__ = ["check", "estimate", "flow", "generate", "train", "verify"]


@click.command()
@config_argument
@set_option
@user_errors
def check(config: str, sets: tuple[str, ...]) -> None:
    """Validate CONFIG and print the derived plan: stages, delays, formats, coefficients."""

    cfg = load_config(config, sets)
    plan = derive_plan(cfg)
    checked = check_config(cfg)
    console = result_console()
    opt = cfg.optimizer
    console.print(
        f"[bold]{cfg.name}[/bold]: {' -> '.join(map(str, cfg.network.layers))}, "
        f"loss {cfg.network.loss.value}, bias {'on' if cfg.network.bias else 'off'}, "
        f"seed {cfg.seed}"
    )
    features = [
        f"SC {'on' if opt.spike_compensation else 'off'}",
        f"LWP {opt.weight_prediction.value}",
        f"stashing {'on' if opt.weight_stashing else 'off'}",
    ]
    pb_note = ", ".join(features) if opt.algorithm.value == "pb" else "non-pipelined reference"
    console.print(
        f"optimizer {opt.algorithm.value} ({pb_note}); lr {opt.lr:g}, momentum "
        f"{opt.momentum:g} at reference batch {opt.reference_batch} -> lr "
        f"{plan.lr:.6g}, momentum {plan.momentum:.6g} at batch {plan.batch_size}"
    )
    console.print(
        f"train: {cfg.train.dataset}, {cfg.train.epochs} epochs, arithmetic "
        f"{cfg.train.arith.value}; hardware: {cfg.hardware.device} at "
        f"{cfg.hardware.clock_mhz:g} MHz, lanes {lanes_text(cfg)}"
    )
    if cfg.train.init_from:
        console.print(f"initial weights: checkpoint {cfg.train.init_from} (fits the network)")
    console.print(f"data: {checked.dataset.describe()}")
    if checked.lanes is None:
        console.print(
            "hardware: not generated for this config (it needs optimizer.algorithm "
            "'pb' without weight stashing, and dense layers only)"
        )
    else:
        console.print(
            f"hardware: lanes {', '.join(map(str, checked.lanes))}, {checked.dsp_blocks} of "
            f"{checked.device.resources['dsp']} DSP blocks on {checked.device.name}, "
            f"predicted {checked.predicted_cycles_per_sample} cycles per sample"
        )

    table = Table(title="stages", title_justify="left")
    for column in ("stage", "shape", "relu", "delay D", "horizon T", "SC a", "SC b", "lanes"):
        table.add_column(column, justify="right")
    for st in plan.stages:
        table.add_row(
            str(st.index),
            f"{st.n_in}x{st.n_out}",
            "yes" if st.relu else "no",
            str(st.delay),
            str(st.horizon),
            f"{st.a:.6g}",
            f"{st.b:.6g}",
            "auto" if st.lanes is None else str(st.lanes),
        )
    console.print(table)
    sizes = Table(title="stage sizes (per sample)", title_justify="left")
    for column in STAGE_COLUMNS:
        sizes.add_column(column, justify="left" if column == "type" else "right")
    for row in stage_rows(plan):
        sizes.add_row(*row)
    console.print(sizes)

    formats = Table(title="number formats", title_justify="left")
    for column in ("role", "stages", "format", "range", "resolution", "rounding", "overflow"):
        formats.add_column(column)

    for role in ROLES:
        groups: dict[object, list[int]] = {}
        for st in plan.stages:
            groups.setdefault(st.formats.role(role), []).append(st.index)
        for rf, idx in groups.items():
            fmt = rf.format
            formats.add_row(
                role,
                ",".join(map(str, idx)),
                str(fmt),
                f"[{fmt.min_value:g}, {fmt.max_value:g}]",
                f"{fmt.resolution:.3g}",
                rf.rounding.value,
                rf.overflow.value,
            )
    console.print(formats)

    console.print(
        _constants_table(
            "update constants (coefficient format)",
            [(st.index, c) for st in plan.stages for c in st.coefficients.values()],
        )
    )
    online = [st for st in plan.stages if st.spec is not None and st.spec.norm is Norm.ONLINE]
    if online and cfg.train.arith is Arith.FIXED:
        rows = [
            (st.index, c)
            for st in online
            if st.spec is not None
            for c in online_constants(st.index, st.spec, st.formats.activation.format).values()
        ]
        title = "Online Normalization constants (decays: 16-bit codes; clamp: activation format)"
        console.print(_constants_table(title, rows))
    for warning in plan.warnings:
        warn(warning)
    console.print("config OK")


def _constants_table(title: str, rows: list[tuple[int, Coefficient]]) -> Table:
    """Constants per stage: the exact value, its code, the value the code stands for, and the
    relative error."""
    table = Table(title=title, title_justify="left")
    for column in ("stage", "constant", "exact", "code", "quantized", "rel. error"):
        table.add_column(column)
    for index, c in rows:
        table.add_row(
            str(index), c.name, f"{c.value:.8g}", str(c.code), f"{c.quantized:.8g}",
            f"{c.error:.2e}",
        )  # fmt: skip
    return table


def overflow_summary(counts: dict[str, int], most: int = 3) -> str:
    """One line on a fixed-point run's overflows (values saturated or wrapped into their
    format, ``"stage role" -> count``): the total and the largest ``most`` counters."""
    top = sorted(((n, key) for key, n in counts.items() if n), key=lambda t: (-t[0], t[1]))
    listed = ", ".join(f"{key} {n:,}" for n, key in top[:most])
    more = f", {len(top) - most} more" if len(top) > most else ""
    return f"overflows: {sum(counts.values()):,} values saturated or wrapped ({listed}{more})"


@click.command()
@config_argument
@click.option(
    "--dataset", help="Dataset: digits, mnist1d, cifar10:PATH or npz:PATH (sets train.dataset)."
)
@click.option("--epochs", type=int, help="Number of epochs (sets train.epochs).")
@click.option(
    "--arith",
    type=click.Choice(["float", "fixed"]),
    help="Arithmetic: float, or fixed (the bit-exact hardware model).",
)
@click.option("--seed", type=int, help="Seed for initial weights and sample order (sets seed).")
@init_from_option
@set_option
@click.option("--json", "json_out", metavar="OUT", help="Write the results as JSON to this file.")
@click.option(
    "--export",
    metavar="PATH",
    help="Write the trained weights as a state_dict of the network's nn.Sequential (float64 "
    "tensors; keys as in the --init-from checkpoint, else 0, 2, 4, ...), for "
    "model.load_state_dict(torch.load(PATH)). Fixed-point training writes the dequantized "
    "weights (code x 2^-frac).",
)
@user_errors
def train(
    config: str,
    dataset: str | None,
    epochs: int | None,
    arith: str | None,
    seed: int | None,
    init_from: str | None,
    sets: tuple[str, ...],
    json_out: str | None,
    export: str | None,
) -> None:
    """Train CONFIG on its dataset and report train/test accuracy and loss."""

    extra = train_sets(dataset, epochs, arith, seed)
    cfg = load_config(config, (*sets, *extra), init_from)
    if json_out:
        check_output_file(Path(json_out), "--json")
    if export:
        check_output_file(Path(export), "--export")
        check_exportable(cfg)
    data = load_dataset(cfg.train.dataset)
    console = progress_console()
    console.print(
        f"training {cfg.name}: {cfg.optimizer.algorithm.value}, "
        f"{cfg.train.arith.value} arithmetic, {data.describe()}"
    )

    def on_epoch(r: Any) -> None:
        console.print(
            f"epoch {r.epoch:3d}/{cfg.train.epochs}  loss {r.train_loss:.4f}  "
            f"stream acc {100 * r.train_accuracy_stream:5.1f}%  "
            f"test acc {100 * r.test_accuracy:5.1f}%  ({r.seconds:.1f} s)"
        )

    result = run_training(cfg, dataset=data, on_epoch=on_epoch)
    click.echo(
        f"test accuracy {100 * result.test_accuracy:.2f}%, train accuracy "
        f"{100 * result.train_accuracy:.2f}%, final loss {result.final_loss:.4f}, "
        f"{result.samples_per_second:.0f} samples/s"
    )
    if result.extra.get("saturation_total"):
        click.echo(overflow_summary(result.extra["saturation"]))
    if result.extra["collapsed"]:
        click.echo(
            "warning: the network collapsed: it predicts one class for every training "
            "sample (dead ReLUs); lower optimizer.lr",
            err=True,
        )
    if json_out:
        write_json(Path(json_out), result.to_json())
    if export:
        indices = read_checkpoint(cfg).indices if cfg.train.init_from else None
        write_state_dict(Path(export), result.weights, indices)


@click.command()
@config_argument
@click.option("-o", "--output", "out_dir", required=True, help="Output directory (replaced).")
@init_from_option
@set_option
@user_errors
def generate(config: str, out_dir: str, init_from: str | None, sets: tuple[str, ...]) -> None:
    """Generate the Verilog of CONFIG's training pipeline into a directory.

    Writes <name>.v, <name>.sdc, memory init files ($readmemh) and manifest.json; the directory
    appears only when everything is written."""

    cfg = load_config(config, sets, init_from)
    check_output_dir(
        Path(out_dir),
        "-o",
        "pbhw generate",
        lambda path: (path / "manifest.json").exists(),  # as rtl_gen.generate recognises it
        replaced=True,
    )
    say(f"generating {cfg.name} ({' -> '.join(map(str, cfg.network.layers))}) ...")
    out = run_generate(cfg, Path(out_dir))
    m = out.manifest
    assert m.files is not None  # generate wrote them
    click.echo(
        f"lanes {', '.join(map(str, m.lanes))}; {m.multipliers.data} data multipliers + "
        f"{m.multipliers.coefficient} products by a constant ("
        + (
            "shift-and-add in the fabric"
            if m.config.hardware.constants is ConstantProducts.FABRIC
            else "on DSP blocks"
        )
        + f"; {m.dsp_blocks} of {m.dsp_available} DSP blocks on {m.device}); "
        f"{m.memory_bits} memory bits"
    )
    click.echo(
        f"predicted {m.predicted_cycles_per_sample} cycles/sample "
        f"({cfg.hardware.clock_mhz * 1e6 / m.predicted_cycles_per_sample:.0f} samples/s at "
        f"{cfg.hardware.clock_mhz:g} MHz), multiplier utilization "
        f"{m.predicted_multiplier_utilization:.2f}"
    )
    # beside the Verilog: the SDC, the init files, the simulation models and manifest.json
    more = 1 + len(m.files.init) + len(m.files.simulation_models) + 1
    click.echo(f"wrote {out.directory}/{m.files.verilog} and {more} more files")


@click.command()
@config_argument
@click.option(
    "--samples",
    type=int,
    default=None,
    help="Training samples of the config's dataset to stream through under cocotb, with "
    "every inter-stage token recorded  [default: 200 unless --epochs is given].",
)
@click.option(
    "--epochs",
    type=int,
    default=None,
    metavar="N",
    help="Instead: N whole epochs of the training set in the trainer's order on the compiled "
    "Verilator harness (every result, W/V at every epoch end, the test accuracy of the RTL's "
    "weights).",
)
@simulator_option
@click.option(
    "--idle",
    type=float,
    default=0.0,
    show_default=True,
    help="Probability of an idle cycle before each sample.",
)
@click.option(
    "--backpressure",
    type=float,
    default=0.0,
    show_default=True,
    help="Probability that the result stream is not ready in a cycle.",
)
@click.option(
    "--waves",
    metavar="FILE",
    help="Also write the waveforms (FILE.fst or FILE.vcd) of the run on the Verilator harness "
    "built with tracing: the whole run if it is short, else a window around the first "
    "mismatch (the end when bit-exact).",
)
@init_from_option
@set_option
@click.option("--json", "json_out", metavar="OUT", help="Write the result as JSON.")
@user_errors
def verify(
    config: str,
    samples: int | None,
    epochs: int | None,
    simulator: str,
    idle: float,
    backpressure: float,
    waves: str | None,
    init_from: str | None,
    sets: tuple[str, ...],
    json_out: str | None,
) -> None:
    """Simulate CONFIG's generated Verilog and compare it with the golden model, bit for bit.

    Exit 0 with a one-line summary when every forward and error token, loss error, prediction,
    final weight and velocity and saturation counter is equal; exit 1 naming the first
    mismatch (step, stage, role, element, both codes) otherwise. With --epochs, whole
    training runs are checked on a compiled Verilator harness (docs/verification.md)."""

    for name, p in (("--idle", idle), ("--backpressure", backpressure)):
        if not 0.0 <= p < 1.0:
            raise UserError(f"{name} must be a probability in [0, 1), not {p}")
    if epochs is not None:
        if samples is not None:
            raise UserError("give either --samples or --epochs, not both")
        if epochs < 1:
            raise UserError(f"--epochs must be a positive integer, not {epochs}")
        if simulator != "verilator":
            raise UserError(
                f"--epochs runs on the compiled Verilator harness, not --simulator {simulator}"
            )
    elif samples is None:
        samples = 200
    if waves is not None:
        if simulator != "verilator":
            raise UserError(f"--waves runs on the Verilator harness, not --simulator {simulator}")
        check_waves_file(waves)
    cfg = load_config(config, sets, init_from)
    if json_out:
        check_output_file(Path(json_out), "--json")
    if epochs is not None:
        say(f"verifying {cfg.name}: {epochs} epochs on the compiled harness ...")
        result = run_verify_epochs(
            cfg,
            epochs=epochs,
            idle=idle,
            backpressure=backpressure,
            waves=waves,
            progress=say,
        )
    else:
        say(f"verifying {cfg.name} on {simulator} with {samples} samples ...")
        result = run_verify(
            cfg,
            samples=samples,
            simulator=simulator,
            idle=idle,
            backpressure=backpressure,
            waves=waves,
            progress=say,
        )
    if result.waves is not None:
        w = result.waves
        say(f"wrote {w.file}: the waves of cycles [{w.from_cycle:,}, {w.to_cycle:,})")
    if json_out:
        write_json(Path(json_out), result.to_json())
    click.echo(result.summary())
    if not result.bit_exact:
        sys.exit(1)


@click.command()
@config_argument
@click.option("--device", help="Device file name in constraints/ (sets hardware.device).")
@click.option(
    "--fast", is_flag=True, help="Analytic estimate from the manifest (no tools, no Fmax)."
)
@click.option(
    "--pnr-timeout",
    type=float,
    metavar="MINUTES",
    help="Stop place and route after this long (then: Yosys counts, no Fmax).",
)
@pnr_seed_option
@set_option
@click.option("--json", "json_out", metavar="OUT", help="Write the estimate as JSON.")
@user_errors
def estimate(
    config: str,
    device: str | None,
    fast: bool,
    pnr_timeout: float | None,
    pnr_seed: int | None,
    sets: tuple[str, ...],
    json_out: str | None,
) -> None:
    """Resources and Fmax of CONFIG's design: Yosys synthesis and nextpnr place and route.

    Results are cached by design hash in the user's cache folder: $PBHW_CACHE_DIR/estimate,
    else $XDG_CACHE_HOME/pbhw/estimate, else ~/.cache/pbhw/estimate (a damaged entry is
    recomputed). A design that does not fit says which resource is short and by how much."""

    if fast and (pnr_seed is not None or pnr_timeout is not None):
        raise UserError("--pnr-seed and --pnr-timeout need place and route; --fast runs none")
    timeout = pnr_timeout_seconds(pnr_timeout)
    if device:
        sets = (*sets, f"hardware.device='{device}'")
    cfg = load_config(config, sets)
    if json_out:
        check_output_file(Path(json_out), "--json")
    what = "analytic estimate" if fast else "synthesis and place-and-route"
    say(f"{what} of {cfg.name} for {cfg.hardware.device} ...")
    est = run_estimate(
        cfg,
        fast=fast,
        progress=lambda m: say(f"  {m}"),
        pnr_timeout=timeout,
        seed=pnr_seed,
    )
    table = Table(title=f"{cfg.name} on {est.device} ({est.method})", title_justify="left")
    for column in ("resource", "used", "available", "share"):
        table.add_column(column, justify="right")
    for key in ("lut", "ff", "dsp", "bram_bits"):
        if key in est.used:
            used, avail = est.used[key], est.available[key]
            table.add_row(key, f"{used:,}", f"{avail:,}", f"{100 * used / max(1, avail):.1f} %")
    result_console().print(table)
    if est.fmax_mhz is not None:
        cps = est.cycles_per_sample
        click.echo(
            f"Fmax {est.fmax_mhz:.1f} MHz (target {est.clock_mhz:g}); {cps} cycles/sample -> "
            f"{est.fmax_mhz * 1e6 / cps:,.0f} samples/s at Fmax"
        )
    if est.critical_path is not None:
        click.echo(f"critical path: {critical_path_text(est.critical_path)}")
    for line in est.notes:
        click.echo(f"note: {line}")
    if not est.fits:
        short = ", ".join(f"{k} by {n:,}" for k, n in est.overflow.items())
        click.echo(f"does not fit {est.device}: short of {short}")
    if json_out:
        write_json(Path(json_out), est.to_json())


@click.command()
@config_argument
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    help="Output directory: new, empty, or an earlier output of pbhw flow (replaced as a "
    "whole once the run is done; a failed run leaves it as it was).",
)
@click.option(
    "--verify-samples",
    type=int,
    default=None,
    help="Samples of a short bit-exact RTL check  [default: the whole training run when its "
    "predicted simulation takes at most 5 minutes on Verilator, else 100 samples].",
)
@simulator_option
@click.option(
    "--pnr-timeout",
    type=float,
    default=60.0,
    show_default=True,
    metavar="MINUTES",
    help="Stop place and route after this long (the report then has Yosys counts, no Fmax).",
)
@pnr_seed_option
@init_from_option
@set_option
@user_errors
def flow(
    config: str,
    out_dir: str,
    verify_samples: int | None,
    simulator: str,
    pnr_timeout: float,
    pnr_seed: int | None,
    init_from: str | None,
    sets: tuple[str, ...],
) -> None:
    """The main job: generate; synthesise and place and route beside training (fixed point vs
    float SGD) and verification; report.

    Writes DIR/report.md (with training.png and resources.png), the JSON of every step and the
    generated design in DIR/rtl."""

    timeout = pnr_timeout_seconds(pnr_timeout)
    cfg = load_config(config, sets, init_from)
    summary = run_flow(
        cfg,
        Path(out_dir),
        verify_samples=verify_samples,
        simulator=simulator,
        progress=say,
        pnr_timeout=timeout,
        pnr_seed=pnr_seed,
    )
    click.echo(f"report: {Path(out_dir) / 'report.md'}")
    if not summary["verify"]["bit_exact"]:
        click.echo(f"error: RTL is not bit-exact: {summary['verify']['mismatch']}", err=True)
        sys.exit(1)
