"""Training throughput of ``pbhw train --arith float`` against a naive per-sample PyTorch loop.

Both train the default example's network (``examples/mlp_digits.toml``) on ``digits`` for the
same number of samples, in float64, at batch size 1 with the batch-1 learning rate and momentum
pbhw derives from the config:

* pbhw: :func:`pbhw.tools.train.train` in-process (PB + LWP + SC, as configured); its
  ``samples_per_second`` counts training steps only (no test evaluation, no data loading);
* torch: ``nn.Sequential`` of ``Linear`` + ``ReLU``, MSE (``0.5 * ||y - onehot||^2``) on one-hot
  targets, ``torch.optim.SGD(lr, momentum)``, ``zero_grad``/``backward``/``step`` per sample,
  timed over the training loop only (the data is already in memory).

Each is repeated ``--repeats`` times (alternating) and the best is kept. Writes ``--out`` (JSON).

    .venv/bin/python bench/train_throughput.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from pbhw.core.config import load
from pbhw.core.datasets import Dataset
from pbhw.core.datasets import load as load_dataset
from pbhw.core.plan import derive_plan
from pbhw.tools.train import train

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples/mlp_digits.toml"


def pbhw_samples_per_second(config_path: Path, epochs: int, data: Dataset) -> float:
    config = load(config_path, [f"train.epochs={epochs}", 'train.arith="float"'])
    return train(config, dataset=data).samples_per_second


def torch_samples_per_second(config_path: Path, epochs: int, data: Dataset) -> float:
    """The same network, data and sample count, trained by a plain per-sample autograd loop."""
    config = load(config_path)
    plan = derive_plan(config)
    torch.manual_seed(config.seed)
    layers: list[torch.nn.Module] = []
    sizes = config.network.layers
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1], bias=config.network.bias))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).double()
    opt = torch.optim.SGD(model.parameters(), lr=plan.lr, momentum=plan.momentum)
    x = data.x_train.to(torch.float64)
    onehot = torch.nn.functional.one_hot(data.y_train, sizes[-1]).to(torch.float64)
    gen = torch.Generator().manual_seed(config.seed)
    n = x.shape[0]
    seconds = 0.0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        xs, ts = x[order], onehot[order]
        start = time.perf_counter()
        for i in range(n):
            opt.zero_grad()
            diff = model(xs[i : i + 1]) - ts[i : i + 1]
            loss = 0.5 * (diff * diff).sum()
            loss.backward()
            opt.step()
            loss.item()  # as a real loop would, to log or watch the loss
        seconds += time.perf_counter() - start
    return n * epochs / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/train_throughput.json")
    args = parser.parse_args()

    config = load(args.config)
    data = load_dataset(config.train.dataset)
    runs: dict[str, list[float]] = {"pbhw": [], "torch": []}
    for _ in range(args.repeats):
        runs["pbhw"].append(pbhw_samples_per_second(args.config, args.epochs, data))
        runs["torch"].append(torch_samples_per_second(args.config, args.epochs, data))
    best = {name: max(values) for name, values in runs.items()}
    ratio = best["pbhw"] / best["torch"]
    payload: dict[str, Any] = {
        "benchmark": "train_throughput",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": str(args.config.relative_to(ROOT) if args.config.is_absolute() else args.config),
        "network": list(config.network.layers),
        "method": "PB+LWP+SC" if config.optimizer.algorithm.value == "pb" else "SGD",
        "dataset": data.describe(),
        "epochs": args.epochs,
        "samples": args.epochs * data.x_train.shape[0],
        "repeats": args.repeats,
        "pbhw_samples_per_second": best["pbhw"],
        "torch_samples_per_second": best["torch"],
        "ratio": ratio,
        "all_runs": runs,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(
        f"pbhw float {best['pbhw']:.0f} samples/s, naive torch autograd "
        f"{best['torch']:.0f} samples/s: ratio {ratio:.2f} (best of {args.repeats}, "
        f"torch {torch.__version__}) -> {args.out}"
    )


if __name__ == "__main__":
    main()
