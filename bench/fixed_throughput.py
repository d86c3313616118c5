"""Speed of the bit-exact fixed-point trainer.

Measures, in one run, on the default example (``examples/mlp_digits.toml``, digits):

1. ``pbhw train --arith fixed`` samples/s (in-process :func:`pbhw.tools.train.train`) against the
   naive per-sample torch autograd float loop of ``bench/train_throughput.py``, with PyTorch's
   default threads and with one thread (the ratio is against the faster of the two);
2. a bit-width sweep of 16 configs (weight/activation/error widths 8..16 x nearest/stochastic
   update rounding) trained in ONE vectorised run (:func:`pbhw.tools.train.train_many`) against the
   same 16 configs trained one after another: aggregate config-samples/s of each.

Every figure is the best of ``--repeats`` runs, pbhw and its comparison alternating.

The sweep's two times split a run of ``C`` configs into ``T(C) = A + C B``: ``A`` what a run
pays once whatever its configs (the per-step Python of the pipeline, setup), ``B`` what each
config adds (its arithmetic). From ``T(1)`` (the one-by-one time over 16) and ``T(16)``:
``B = (T(16) - T(1)) / 15``, ``A = T(1) - B``, both also per training step. The speedup
``16 T(1) / T(16)`` reaches 8 only when ``A >= 14 B``.

Writes ``--out`` (JSON) and prints a summary.

    .venv/bin/python bench/fixed_throughput.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bitwidth_accuracy import formats  # noqa: E402
from train_throughput import torch_samples_per_second  # noqa: E402

from pbhw.core.config import load  # noqa: E402
from pbhw.core.datasets import load as load_dataset  # noqa: E402
from pbhw.tools.train import train, train_many  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "mlp_digits.toml"
WIDTHS = (8, 9, 10, 11, 12, 13, 14, 16)


def sweep_configs(epochs: int) -> list:
    configs = []
    for width in WIDTHS:
        for rounding in ("nearest", "stochastic"):
            sets = [f"train.epochs={epochs}", 'train.arith="fixed"']
            for role, table in formats(width, rounding).items():
                sets += [
                    f"formats.{role}.{key}={json.dumps(value)}" for key, value in table.items()
                ]
            configs.append(load(CONFIG, sets))
    return configs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fixed_throughput.json"))
    args = parser.parse_args()
    load_before = list(os.getloadavg())
    data = load_dataset("digits")
    fixed_cfg = load(CONFIG, [f"train.epochs={args.epochs}", 'train.arith="fixed"'])
    fixed, naive, naive_one = [], [], []
    threads = torch.get_num_threads()
    for _ in range(args.repeats):
        fixed.append(train(fixed_cfg, dataset=data).samples_per_second)
        naive.append(torch_samples_per_second(CONFIG, args.epochs, data))
        torch.set_num_threads(1)
        try:
            naive_one.append(torch_samples_per_second(CONFIG, args.epochs, data))
        finally:
            torch.set_num_threads(threads)
    best_naive = max(naive + naive_one)
    configs = sweep_configs(args.epochs)
    samples = data.x_train.shape[0] * args.epochs * len(configs)
    batched, sequential = [], []
    for _ in range(args.repeats):  # alternating, the best of each
        start = time.perf_counter()
        train_many(configs, dataset=data)
        batched.append(time.perf_counter() - start)
        start = time.perf_counter()
        for cfg in configs:
            train(cfg, dataset=data)
        sequential.append(time.perf_counter() - start)
    batched_s, sequential_s = min(batched), min(sequential)
    one = sequential_s / len(configs)  # T(1)
    per_config = (batched_s - one) / (len(configs) - 1)  # B
    shared = one - per_config  # A
    steps = data.x_train.shape[0] * args.epochs
    result = {
        "command": " ".join(["python", *sys.argv]),
        "repeats": args.repeats,
        "config": str(CONFIG.relative_to(ROOT)),
        "epochs": args.epochs,
        "fixed_samples_per_second": max(fixed),
        "naive_torch_float_samples_per_second": max(naive),
        "naive_torch_float_one_thread_samples_per_second": max(naive_one),
        "torch_default_threads": threads,
        "fixed_vs_naive": max(fixed) / best_naive,
        "sweep_configs": len(configs),
        "sweep_batched_seconds": batched_s,
        "sweep_sequential_seconds": sequential_s,
        "sweep_batched_config_samples_per_second": samples / batched_s,
        "sweep_sequential_config_samples_per_second": samples / sequential_s,
        "sweep_speedup": sequential_s / batched_s,
        "run_split": {
            "shared_seconds_A": shared,
            "per_config_seconds_B": per_config,
            "shared_us_per_step": shared / steps * 1e6,
            "per_config_us_per_step": per_config / steps * 1e6,
            "A_over_B": shared / per_config,
            "note": "T(C) = A + C B from T(1) and T(16); an 8x sweep speedup needs A >= 14 B",
        },
        "sweep_all_runs": {"batched_seconds": batched, "sequential_seconds": sequential},
        "note": "wall-clock of whole runs incl. evaluation; best of the repeats (alternating)",
        "load_average_before_after": [load_before, list(os.getloadavg())],
        "machine": {"python": platform.python_version(), "torch": torch.__version__},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"fixed {result['fixed_samples_per_second']:.0f} samples/s vs naive torch float "
        f"{best_naive:.0f} ({result['fixed_vs_naive']:.2f}x); "
        f"16-config sweep batched {batched_s:.2f} s vs one by one {sequential_s:.2f} s "
        f"({result['sweep_speedup']:.1f}x; per step {shared / steps * 1e6:.0f} us shared, "
        f"{per_config / steps * 1e6:.0f} us per config) -> {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
