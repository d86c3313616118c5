"""Test accuracy of PB+LWP+SC in fixed point against bit width, nearest vs stochastic rounding.

For each bench and seed, every fixed-point point (width x update rounding) trains in ONE
vectorised run (`pbhw.tools.train.train_many`), beside float SGD (batch 1) and float PB+LWP+SC.
Suite ``mlp``: perceptrons on digits and mnist1d. Suite ``cnn``: the 1-D convolutional network of
examples/cnn_mnist1d_fixed.toml on mnist1d (its lr, 0.05, and softmax cross-entropy); bench
``mnist1d-cnn-on`` (``--datasets``) the Online Normalization network of
examples/cnn_mnist1d_on.toml.

Formats at width B (weights, activations, errors share B; fractional splits fixed below):
  weight s{B}.{B-3} (range +-4), activation s{B}.{B-5} (+-16), error s{B}.{B-3} (+-4),
  gradient s{B}.{B-2} (+-2), velocity s{B+4}.{B-2} (+-32), coefficient s24.22
  (--activation-int and --gradient-int move the activation's and the gradient's split).
"Nearest" rounds every role half-even. "Stochastic" rounds the update path (gradient,
velocity, weight and predicted weight) stochastically; the datapath (activations, errors)
stays half-even. Every overflow saturates.

    python bench/bitwidth_accuracy.py                      # full run, ~15 min on 2 cores
    python bench/bitwidth_accuracy.py --suite cnn          # the CNN, ~20 min on a loaded machine
    python bench/bitwidth_accuracy.py --quick              # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import tomllib
from pathlib import Path

import torch

from pbhw.core.config import from_dict
from pbhw.core.datasets import load
from pbhw.tools.train import train, train_many

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = {"digits": [64, 32, 32, 10], "mnist1d": [40, 64, 64, 10]}
# Reference-batch learning rates (B_ref = 32): mnist1d's standardised inputs need a smaller one
# (bench/pb_vs_sgd.py found even SGD collapsing at 0.1).
LRS = {"digits": 0.1, "mnist1d": 0.03}
UPDATE_ROLES = ("gradient", "velocity", "weight")
#: Benches beyond the perceptrons of NETWORKS: the config each starts from.
CONFIGS = {
    "mnist1d-cnn": ROOT / "examples" / "cnn_mnist1d_fixed.toml",
    "mnist1d-cnn-on": ROOT / "examples" / "cnn_mnist1d_on.toml",
}
#: Per suite: the default benches, roundings, seeds, epochs and output file (bench/results/).
#: The CNN's bit-exact trainer, 4 configs in one run, trains about 900 config-samples/s on a
#: 2-core machine at load 3-5 (3 epochs of 4 configs: 53-69 s).
SUITES = {
    "mlp": ("digits,mnist1d", "nearest,stochastic", 2, 8, "bitwidth_accuracy.json"),
    "cnn": ("mnist1d-cnn", "nearest,stochastic", 3, 8, "bitwidth_cnn.json"),
}


def formats(width: int, rounding: str, activation_int: int = 5, gradient_int: int = 2) -> dict:
    """The formats at ``width``; ``activation_int`` and ``gradient_int`` integer bits (sign
    included) of activations and gradients."""

    def role(w: int, frac: int, r: str = "half_even") -> dict:
        return {"width": w, "frac": frac, "rounding": r, "overflow": "saturate"}

    update = "stochastic" if rounding == "stochastic" else "half_even"
    return {
        "weight": role(width, width - 3, update),
        "activation": role(width, width - activation_int),
        "error": role(width, width - 3),
        "gradient": role(width, width - gradient_int, update),
        "velocity": role(width + 4, width - 2, update),
        "coefficient": role(24, 22),
    }


def base(bench: str, seed: int, epochs: int) -> dict:
    """The raw config of ``bench`` (a perceptron of NETWORKS or a config of CONFIGS)."""
    if bench in CONFIGS:
        raw = tomllib.loads(CONFIGS[bench].read_text())
        return {**raw, "seed": seed, "train": {**raw["train"], "epochs": epochs, "arith": "fixed"}}
    dataset = bench
    return {
        "name": f"bitwidth_{dataset}",
        "seed": seed,
        "network": {"layers": NETWORKS[dataset], "loss": "mse"},
        "optimizer": {
            "algorithm": "pb",
            "lr": LRS[dataset],
            "momentum": 0.9,
            "reference_batch": 32,
            "spike_compensation": True,
            "weight_prediction": "velocity",
        },
        "train": {"dataset": dataset, "epochs": epochs, "arith": "fixed"},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--suite",
        choices=SUITES,
        default="mlp",
        help="default benches, roundings, seeds, epochs and output: "
        + "; ".join(
            f"{k}: {b}, {r}, {s} seeds, {e} epochs, {o}" for k, (b, r, s, e, o) in SUITES.items()
        ),
    )
    parser.add_argument(
        "--datasets", help="benches, comma-separated: " + ", ".join([*NETWORKS, *CONFIGS])
    )
    parser.add_argument("--roundings", help="comma-separated: nearest, stochastic")
    parser.add_argument("--widths", default="8,10,12,16")
    parser.add_argument(
        "--activation-int",
        type=int,
        default=5,
        help="integer bits of the activation format, sign included (default 5: s{B}.{B-5})",
    )
    parser.add_argument(
        "--gradient-int",
        type=int,
        default=2,
        help="integer bits of the gradient format, sign included (default 2: s{B}.{B-2})",
    )
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument(
        "--quick", action="store_true", help="1 seed, 2 epochs, the first bench only"
    )
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    benches, roundings, seeds, epochs, name = SUITES[args.suite]
    args.datasets = args.datasets or benches
    args.roundings = args.roundings or roundings
    args.seeds = args.seeds or seeds
    args.epochs = args.epochs or epochs
    args.out = args.out or str(ROOT / "bench" / "results" / name)
    if args.quick:
        args.datasets, args.seeds, args.epochs = args.datasets.split(",")[0], 1, 2
    bench_list = args.datasets.split(",")
    for bench in bench_list:
        if bench not in NETWORKS and bench not in CONFIGS:
            parser.error(f"bench must be one of {', '.join([*NETWORKS, *CONFIGS])}, not {bench!r}")
    for rounding in args.roundings.split(","):
        if rounding not in ("nearest", "stochastic"):
            parser.error(f"rounding must be nearest or stochastic, not {rounding!r}")
    widths = [int(w) for w in args.widths.split(",")]
    rows = []
    start = time.perf_counter()
    for dataset in bench_list:  # a bench: the row's "dataset" names it
        data = load(base(dataset, 0, 1)["train"]["dataset"])
        for seed in range(args.seeds):
            raw = base(dataset, seed, args.epochs)
            points = [(w, r) for w in widths for r in args.roundings.split(",")]
            configs = [
                from_dict({**raw, "formats": formats(w, r, args.activation_int, args.gradient_int)})
                for w, r in points
            ]
            t0 = time.perf_counter()
            results = train_many(configs, dataset=data)
            batched_s = time.perf_counter() - t0
            for (w, r), res in zip(points, results, strict=True):
                rows.append(
                    {
                        "dataset": dataset,
                        "seed": seed,
                        "method": f"fixed {w}-bit {r}",
                        "width": w,
                        "rounding": r,
                        "test_accuracy": res.test_accuracy,
                        "saturation_total": res.extra["saturation_total"],
                        "diverged": res.extra["diverged"],
                    }
                )
            for method, opt, arith in (
                ("float SGD", {"algorithm": "sgd"}, "float"),
                ("float PB+LWP+SC", {}, "float"),
            ):
                cfg = from_dict(
                    {
                        **raw,
                        "optimizer": {**raw["optimizer"], **opt},
                        "train": {**raw["train"], "arith": arith},
                    }
                )
                res = train(cfg, dataset=data)
                rows.append(
                    {
                        "dataset": dataset,
                        "seed": seed,
                        "method": method,
                        "width": None,
                        "rounding": None,
                        "test_accuracy": res.test_accuracy,
                    }
                )
            print(
                f"{dataset} seed {seed}: {len(points)} fixed points in one run "
                f"({batched_s:.0f} s), {time.perf_counter() - start:.0f} s elapsed",
                file=sys.stderr,
            )
    summary = {}
    for row in rows:
        summary.setdefault((row["dataset"], row["method"]), []).append(row["test_accuracy"])
    table = [
        {
            "dataset": d,
            "method": m,
            "mean": statistics.mean(v),
            "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "n": len(v),
        }
        for (d, m), v in summary.items()
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": " ".join(["python", "bench/bitwidth_accuracy.py", *(argv or sys.argv[1:])]),
        "epochs": args.epochs,
        "seeds": args.seeds,
        "formats": {
            w: formats(w, "stochastic", args.activation_int, args.gradient_int) for w in widths
        },
        "configs": {d: str(CONFIGS[d].relative_to(ROOT)) for d in bench_list if d in CONFIGS},
        "seconds": time.perf_counter() - start,
        "machine": {"python": platform.python_version(), "torch": torch.__version__},
        "rows": rows,
        "summary": table,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    lines = ["| dataset | method | test accuracy (mean ± std, %) |", "|---|---|---|"]
    for t in table:
        lines.append(
            f"| {t['dataset']} | {t['method']} | {100 * t['mean']:.2f} ± {100 * t['std']:.2f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
