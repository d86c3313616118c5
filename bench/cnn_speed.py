"""Training speed of convolutional networks: pbhw's PB trainer against a naive per-sample PyTorch
autograd loop of the same network, measured in one process, in float and in fixed point.

* float: ``examples/cnn_mnist1d.toml``'s network (conv 1-D stages with group norm, a residual and
  pooling, then a dense layer), trained by pbhw in float64;
* fixed: ``examples/cnn_mnist1d_fixed.toml``'s network (the same without group norm), trained by
  pbhw in the bit-exact fixed-point model (``train.arith = "fixed"``, as that example sets).

Each pbhw trainer is compared with the same layers trained on ``mnist1d`` for the same number of
samples, in float64, at batch size 1 with the batch-1 learning rate and momentum pbhw derives from
the config:

* pbhw: :func:`pbhw.tools.train.train` in-process (PB + LWP + SC, as configured; one PyTorch
  thread, as the trainer sets for convolutional networks); its ``samples_per_second`` counts
  training steps only;
* torch: the same layers as ``nn.Conv1d``/``nn.GroupNorm``/``nn.Linear`` modules with the
  residual add and pooling written in ``forward``, softmax cross-entropy,
  ``torch.optim.SGD(lr, momentum)``, ``zero_grad``/``backward``/``step`` per sample, timed over
  the training loop only. It runs with each thread count of ``--torch-threads`` (default: one
  and PyTorch's default); the fastest is its figure.

The dataset is made once, before any timing (generating ``mnist1d`` in memory takes seconds:
its transforms alone make some 45,000 ``np.linspace`` calls), so neither figure includes it.
Each is repeated ``--repeats`` times (alternating) and the best is kept. Writes ``--out``
(JSON).

    .venv/bin/python bench/cnn_speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbhw.core.config import Norm, Pool, load
from pbhw.core.datasets import Dataset
from pbhw.core.datasets import load as load_dataset
from pbhw.core.plan import Plan, derive_plan
from pbhw.tools.train import train

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples/cnn_mnist1d.toml"
FIXED_CONFIG = ROOT / "examples/cnn_mnist1d_fixed.toml"


class TorchNet(nn.Module):
    """The plan's network as ordinary PyTorch modules (autograd does the backward)."""

    def __init__(self, plan: Plan):
        super().__init__()
        self.plan = plan
        bias = plan.config.network.bias
        self.layers = nn.ModuleList()
        for st in plan.stages:
            parts = nn.ModuleDict()
            if st.conv:
                sp = st.spec
                conv = nn.Conv1d if len(st.in_shape) == 2 else nn.Conv2d
                parts["conv"] = conv(
                    st.in_shape[0], sp.out, sp.kernel, sp.stride, sp.padding, bias=bias
                )
                if sp.norm is Norm.GROUP:
                    parts["norm"] = nn.GroupNorm(sp.groups, sp.out)
                if sp.projection:
                    parts["projection"] = conv(
                        st.residual_shape[0], sp.out, 1, sp.projection_stride, bias=bias
                    )
            else:
                parts["dense"] = nn.Linear(st.n_in, st.n_out, bias=bias)
            self.layers.append(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], *self.plan.stages[0].in_shape)
        outputs: list[torch.Tensor] = []
        for st, parts in zip(self.plan.stages, self.layers, strict=True):
            if "dense" in parts:
                h = parts["dense"](h.flatten(1))
                h = torch.relu(h) if st.relu else h
                outputs.append(h)
                continue
            sp = st.spec
            h = parts["conv"](h)
            if "norm" in parts:
                h = parts["norm"](h)
            if sp.residual:
                r = outputs[-sp.residual]
                h = h + (parts["projection"](r) if "projection" in parts else r)
            h = torch.relu(h) if st.relu else h
            rank = len(st.in_shape) - 1
            if sp.pool is Pool.AVG:
                h = (nn.functional.avg_pool1d if rank == 1 else nn.functional.avg_pool2d)(h, 2)
            elif sp.pool is Pool.MAX:
                h = (nn.functional.max_pool1d if rank == 1 else nn.functional.max_pool2d)(h, 2)
            elif sp.pool is Pool.GLOBAL_AVG:
                h = h.mean(tuple(range(2, h.ndim)))
            outputs.append(h)
        return h.flatten(1)


def pbhw_samples_per_second(config_path: Path, epochs: int, data: Dataset) -> float:
    config = load(config_path, [f"train.epochs={epochs}"])
    return train(config, dataset=data).samples_per_second


def torch_samples_per_second(config_path: Path, epochs: int, data: Dataset, threads: int) -> float:
    """The same network, data and sample count, trained by a plain per-sample autograd loop."""
    config = load(config_path)
    plan = derive_plan(config)
    torch.manual_seed(config.seed)
    model = TorchNet(plan).double()
    opt = torch.optim.SGD(model.parameters(), lr=plan.lr, momentum=plan.momentum)
    x, y = data.x_train.to(torch.float64), data.y_train
    gen = torch.Generator().manual_seed(config.seed)
    n = x.shape[0]
    seconds = 0.0
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            xs, ys = x[order], y[order]
            start = time.perf_counter()
            for i in range(n):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(xs[i : i + 1]), ys[i : i + 1])
                loss.backward()
                opt.step()
                loss.item()  # as a real loop would, to log or watch the loss
            seconds += time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    return n * epochs / seconds


def compare(
    config_path: Path, epochs: int, data: Dataset, threads: list[int], repeats: int
) -> dict[str, Any]:
    """pbhw against the naive loop on one config: best samples/s of each, their ratio, all
    runs (alternating pbhw and torch in every repeat)."""
    runs: dict[str, list[float]] = {"pbhw": [], **{f"torch_{n}_threads": [] for n in threads}}
    for _ in range(repeats):
        runs["pbhw"].append(pbhw_samples_per_second(config_path, epochs, data))
        for n in threads:
            runs[f"torch_{n}_threads"].append(
                torch_samples_per_second(config_path, epochs, data, n)
            )
    best = {name: max(values) for name, values in runs.items()}
    torch_best = max(value for name, value in best.items() if name != "pbhw")
    config = load(config_path)
    return {
        "config": str(config_path.relative_to(ROOT) if config_path.is_absolute() else config_path),
        "arith": config.train.arith.value,
        "network": [list(st.out_shape) for st in derive_plan(config).stages],
        "pbhw_samples_per_second": best["pbhw"],
        "torch_samples_per_second": torch_best,
        "ratio": best["pbhw"] / torch_best,
        "all_runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG, help="the float network")
    parser.add_argument(
        "--fixed-config", type=Path, default=FIXED_CONFIG, help="the fixed-point network"
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/cnn_speed.json")
    parser.add_argument(
        "--torch-threads",
        default=f"1,{torch.get_num_threads()}",
        help="comma-separated thread counts of the torch loop (default: 1 and the default)",
    )
    args = parser.parse_args()

    config = load(args.config)
    data = load_dataset(config.train.dataset)
    if load(args.fixed_config).train.dataset != config.train.dataset:
        print("error: --config and --fixed-config must train on one dataset", file=sys.stderr)
        raise SystemExit(2)
    threads = sorted({int(n) for n in args.torch_threads.split(",")})
    float_run = compare(args.config, args.epochs, data, threads, args.repeats)
    fixed_run = compare(args.fixed_config, args.epochs, data, threads, args.repeats)
    payload: dict[str, Any] = {
        "benchmark": "cnn_speed",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": data.describe(),
        "epochs": args.epochs,
        "samples": args.epochs * data.x_train.shape[0],
        "repeats": args.repeats,
        **{k: v for k, v in float_run.items() if k != "arith"},
        "fixed": fixed_run,
        "load_average": list(os.getloadavg()),
        "torch": torch.__version__,
        "torch_threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    for name, run in (("float", float_run), ("fixed", fixed_run)):
        print(
            f"pbhw {name} {run['pbhw_samples_per_second']:.0f} samples/s, naive torch autograd "
            f"{run['torch_samples_per_second']:.0f} samples/s: ratio {run['ratio']:.2f}"
        )
    print(f"(best of {args.repeats}) -> {args.out}")


if __name__ == "__main__":
    main()
