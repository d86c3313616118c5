"""Training speed of convolutional networks: pbhw's PB trainer against a naive per-sample PyTorch
autograd loop of the same network, measured in one process, in float and in fixed point.

Networks (``--networks``, default all):

* ``mnist1d``, two measurements (the top-level keys of the JSON, as before):

  * float: ``examples/cnn_mnist1d.toml``'s network (conv 1-D stages with group norm, a residual
    and pooling, then a dense layer), trained by pbhw in float64;
  * fixed (key ``fixed``): ``examples/cnn_mnist1d_fixed.toml``'s network (the same without
    group norm), trained by pbhw in the bit-exact fixed-point model (``train.arith = "fixed"``,
    as that example sets);

* ``mnist1d-gn``: ``examples/cnn_mnist1d_gn.toml`` (group norm in every conv stage), trained by
  pbhw in float and in fixed point (``train.arith=fixed`` as a config override);
* ``mnist1d-on``: ``examples/cnn_mnist1d_on.toml`` (Online Normalization in every conv stage,
  with the config's ``alpha_fwd``, ``alpha_bkw`` and ``clamp``), likewise in float and in fixed
  point.

The last two are written under ``networks.<name>.float`` and ``networks.<name>.fixed``; each
pbhw run of a network is compared with the one naive torch loop of that network (the torch loop
is float64 whatever pbhw's arithmetic: it is measured once per repeat and stands for both).
``--arith`` picks the arithmetics of every network (default both; for ``mnist1d``, float is its
float measurement and fixed its fixed one).

Each pbhw trainer is compared with the same layers trained on ``mnist1d`` for the same number of
samples, in float64, at batch size 1 with the batch-1 learning rate and momentum pbhw derives from
the config:

* pbhw: :func:`pbhw.tools.train.train` in-process (PB + LWP + SC, as configured; one PyTorch
  thread, as the trainer sets for convolutional networks); its ``samples_per_second`` counts
  training steps only;
* torch: the same layers as ``nn.Conv1d``/``nn.GroupNorm``/``nn.Linear`` modules with the
  residual add and pooling written in ``forward``, softmax cross-entropy,
  ``torch.optim.SGD(lr, momentum)``, ``zero_grad``/``backward``/``step`` per sample, timed over
  the training loop only. PyTorch has no Online Normalization: :class:`OnlineNorm` is one as a
  user would write it after pbhw's float definition (``golden/conv.py``, ``OnlineStats``), a
  ``torch.autograd.Function`` whose forward normalizes each sample with the running per-channel
  statistics of the samples before it and then folds its own in (decay ``alpha_fwd``), and whose
  backward removes the error's components along ``y`` and along the constant as estimated by the
  errors before (decay ``alpha_bkw``), followed by the learned scale and shift and the clamp as
  ordinary autograd operations. It runs with each thread count of ``--torch-threads`` (default:
  one and PyTorch's default); the fastest is its figure.

The dataset is made once, before any timing (generating ``mnist1d`` in memory takes seconds:
its transforms alone make some 45,000 ``np.linspace`` calls), so neither figure includes it.
Each is repeated ``--repeats`` times (alternating pbhw and torch in every repeat) and the best is
kept. Writes ``--out`` (JSON).

    .venv/bin/python bench/cnn_speed.py
    .venv/bin/python bench/cnn_speed.py --networks mnist1d-on --arith float --repeats 1
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

from golden.conv import NORM_EPS
from pbhw.core.config import Norm, Pool, load
from pbhw.core.datasets import Dataset
from pbhw.core.datasets import load as load_dataset
from pbhw.core.plan import Plan, StagePlan, derive_plan
from pbhw.tools.train import train

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples/cnn_mnist1d.toml"
FIXED_CONFIG = ROOT / "examples/cnn_mnist1d_fixed.toml"
GN_CONFIG = ROOT / "examples/cnn_mnist1d_gn.toml"
ON_CONFIG = ROOT / "examples/cnn_mnist1d_on.toml"
#: ``--networks`` choices, in the order they run
NETWORKS = ("mnist1d", "mnist1d-gn", "mnist1d-on")
ARITHS = ("float", "fixed")


class OnlineNormFunction(torch.autograd.Function):
    """Online Normalization's ``y`` of conv outputs ``c [B, C, positions...]``, one sample after
    another, with the running state of ``norm`` (an :class:`OnlineNorm`), per channel:

    forward: ``y = (c - mean) / sqrt(var + eps)`` with the statistics of the samples before,
    then ``var <- a var + (1 - a) var(c) + a (1 - a) (mu(c) - mean)^2`` and ``mean <- mean +
    (1 - a) (mu(c) - mean)`` (``a = alpha_fwd``; ``mu(c)``, ``var(c)`` over the sample's
    positions);

    backward (error compensation, ``b = alpha_bkw``): ``g <- g - (1 - b) v y``, ``v <- v +
    mu(g y)``, ``g <- g / sqrt(var + eps)`` (the forward's), ``g <- g - (1 - b) u``, ``u <- u +
    mu(g)``."""

    @staticmethod
    def forward(ctx: Any, c: torch.Tensor, norm: OnlineNorm) -> torch.Tensor:  # type: ignore[override]
        positions = tuple(range(1, c.ndim - 1))  # of one sample [C, positions...]
        view = (-1, *(1,) * (c.ndim - 2))
        a = norm.alpha_fwd
        y = torch.empty_like(c)
        scale = torch.empty(c.shape[:2], dtype=c.dtype)
        for b in range(c.shape[0]):
            scale[b] = torch.sqrt(norm.var + NORM_EPS)
            y[b] = (c[b] - norm.mean.view(view)) / scale[b].view(view)
            mu = c[b].mean(positions)
            sample_var = (c[b] - mu.view(view)).square().mean(positions)
            step = mu - norm.mean
            norm.var.mul_(a).add_((1 - a) * sample_var + a * (1 - a) * step.square())
            norm.mean.add_((1 - a) * step)
        ctx.norm = norm
        ctx.save_for_backward(y, scale)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        norm: OnlineNorm = ctx.norm
        y, scale = ctx.saved_tensors
        positions = tuple(range(1, g.ndim - 1))
        view = (-1, *(1,) * (g.ndim - 2))
        keep = 1 - norm.alpha_bkw
        out = torch.empty_like(g)
        for b in range(g.shape[0]):
            grad = g[b] - keep * norm.v.view(view) * y[b]
            norm.v.add_((grad * y[b]).mean(positions))
            grad = grad / scale[b].view(view)
            out[b] = grad - keep * norm.u.view(view)
            norm.u.add_(out[b].mean(positions))
        return out, None


class OnlineNorm(nn.Module):
    """Online Normalization (Chiley et al., 2019) as pbhw's float model defines it: per channel,
    running statistics over the stream (:class:`OnlineNormFunction`), a learned scale and shift
    (``weight``, ``bias``: ones and zeros, as pbhw starts them), then the clamp to ``[-clamp,
    clamp]``. In evaluation (``eval()``) the statistics are only read."""

    def __init__(self, channels: int, alpha_fwd: float, alpha_bkw: float, clamp: float):
        super().__init__()
        self.alpha_fwd, self.alpha_bkw, self.clamp = alpha_fwd, alpha_bkw, clamp
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))
        self.register_buffer("u", torch.zeros(channels))  # the backward's running mean error
        self.register_buffer("v", torch.zeros(channels))  # ... and its component along y

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        view = (-1, *(1,) * (c.ndim - 2))
        if self.training:
            y = OnlineNormFunction.apply(c, self)
        else:
            y = (c - self.mean.view(view)) / torch.sqrt(self.var + NORM_EPS).view(view)
        z = y * self.weight.view(view) + self.bias.view(view)
        return z.clamp(-self.clamp, self.clamp)


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
                elif sp.norm is Norm.ONLINE:
                    parts["norm"] = OnlineNorm(sp.out, sp.alpha_fwd, sp.alpha_bkw, sp.clamp)
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
            h = self.stage_forward(st, parts, h, outputs)
            outputs.append(h)
        return h.flatten(1)

    @staticmethod
    def stage_forward(
        st: StagePlan, parts: nn.ModuleDict, h: torch.Tensor, outputs: list[torch.Tensor]
    ) -> torch.Tensor:
        """One stage's output of its input ``h`` (``outputs``: the earlier stages' outputs)."""
        if "dense" in parts:
            h = parts["dense"](h.flatten(1))
            return torch.relu(h) if st.relu else h
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
        return h


def pbhw_samples_per_second(
    config_path: Path, epochs: int, data: Dataset, arith: str | None = None
) -> float:
    """pbhw's training steps per second on the config (in ``arith`` if given, else the
    config's)."""
    sets = [f"train.epochs={epochs}", *([f"train.arith={arith}"] if arith else [])]
    return train(load(config_path, sets), dataset=data).samples_per_second


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


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_absolute() else path)


def compare(
    config_path: Path, epochs: int, data: Dataset, threads: list[int], repeats: int
) -> dict[str, Any]:
    """pbhw in the config's own arithmetic against the naive loop on one config: best samples/s
    of each, their ratio, all runs (alternating pbhw and torch in every repeat)."""
    arith = load(config_path).train.arith.value
    run = compare_arithmetics(config_path, [arith], epochs, data, threads, repeats)
    return {"config": run["config"], "arith": arith, "network": run["network"], **run[arith]}


def compare_arithmetics(
    config_path: Path,
    ariths: list[str],
    epochs: int,
    data: Dataset,
    threads: list[int],
    repeats: int,
) -> dict[str, Any]:
    """pbhw in each of ``ariths`` against the naive loop on one config. Every repeat runs pbhw in
    each arithmetic, then the torch loop at each thread count (one float64 loop: it stands for
    both); each arithmetic gets the best samples/s of pbhw, of torch, their ratio and the runs."""
    pbhw_runs: dict[str, list[float]] = {arith: [] for arith in ariths}
    torch_runs: dict[str, list[float]] = {f"torch_{n}_threads": [] for n in threads}
    for _ in range(repeats):
        for arith in ariths:
            pbhw_runs[arith].append(pbhw_samples_per_second(config_path, epochs, data, arith))
        for n in threads:
            torch_runs[f"torch_{n}_threads"].append(
                torch_samples_per_second(config_path, epochs, data, n)
            )
    torch_best = max(max(values) for values in torch_runs.values())
    out: dict[str, Any] = {
        "config": _relative(config_path),
        "network": [list(st.out_shape) for st in derive_plan(load(config_path)).stages],
    }
    for arith in ariths:
        best = max(pbhw_runs[arith])
        out[arith] = {
            "arith": arith,
            "pbhw_samples_per_second": best,
            "torch_samples_per_second": torch_best,
            "ratio": best / torch_best,
            "all_runs": {"pbhw": pbhw_runs[arith], **torch_runs},
        }
    return out


def _choices(text: str, allowed: tuple[str, ...], option: str) -> list[str]:
    """The comma-separated names of ``text`` in ``allowed``'s order (an unknown one: exit 2)."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(allowed))
    if unknown or not names:
        print(
            f"error: {option} takes a comma-separated subset of {', '.join(allowed)}, not {text!r}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return [name for name in allowed if name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG, help="the float network")
    parser.add_argument(
        "--fixed-config", type=Path, default=FIXED_CONFIG, help="the fixed-point network"
    )
    parser.add_argument(
        "--gn-config", type=Path, default=GN_CONFIG, help="the group-norm network (mnist1d-gn)"
    )
    parser.add_argument(
        "--on-config",
        type=Path,
        default=ON_CONFIG,
        help="the Online Normalization network (mnist1d-on)",
    )
    parser.add_argument(
        "--networks",
        default=",".join(NETWORKS),
        help=f"comma-separated networks to measure, of {', '.join(NETWORKS)} (default: all)",
    )
    parser.add_argument(
        "--arith",
        default=",".join(ARITHS),
        help="comma-separated arithmetics of pbhw, of float, fixed (default: both)",
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
    networks = _choices(args.networks, NETWORKS, "--networks")
    ariths = _choices(args.arith, ARITHS, "--arith")

    # mnist1d's float and fixed measurements (the top-level keys) and the other networks
    legacy = {"float": args.config, "fixed": args.fixed_config}
    legacy = {
        arith: path for arith, path in legacy.items() if "mnist1d" in networks and arith in ariths
    }
    others = {"mnist1d-gn": args.gn_config, "mnist1d-on": args.on_config}
    others = {name: path for name, path in others.items() if name in networks}
    paths = [*legacy.values(), *others.values()]
    data_name = load(paths[0]).train.dataset
    if any(load(path).train.dataset != data_name for path in paths):
        print("error: every config measured must train on one dataset", file=sys.stderr)
        raise SystemExit(2)
    data = load_dataset(data_name)  # once, before any timing
    threads = sorted({int(n) for n in args.torch_threads.split(",")})
    legacy_runs = {
        arith: compare(path, args.epochs, data, threads, args.repeats)
        for arith, path in legacy.items()
    }
    network_runs = {
        name: compare_arithmetics(path, ariths, args.epochs, data, threads, args.repeats)
        for name, path in others.items()
    }
    payload: dict[str, Any] = {
        "benchmark": "cnn_speed",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": data.describe(),
        "epochs": args.epochs,
        "samples": args.epochs * data.x_train.shape[0],
        "repeats": args.repeats,
    }
    if "float" in legacy_runs:
        payload.update({k: v for k, v in legacy_runs["float"].items() if k != "arith"})
    if "fixed" in legacy_runs:
        payload["fixed"] = legacy_runs["fixed"]
    payload.update(
        {
            "networks": network_runs,
            "load_average": list(os.getloadavg()),
            "torch": torch.__version__,
            "torch_threads": threads,
            "python": platform.python_version(),
            "platform": platform.platform(),
        }
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    lines = [(f"mnist1d {arith}", run) for arith, run in legacy_runs.items()]
    lines += [
        (f"{name} {arith}", run[arith]) for name, run in network_runs.items() for arith in ariths
    ]
    for label, run in lines:
        print(
            f"pbhw {label} {run['pbhw_samples_per_second']:.0f} samples/s, naive torch autograd "
            f"{run['torch_samples_per_second']:.0f} samples/s: ratio {run['ratio']:.2f}"
        )
    print(f"(best of {args.repeats}) -> {args.out}")


if __name__ == "__main__":
    main()
