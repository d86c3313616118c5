"""Training on real data with the PB schedule (or the SGD reference) in the chosen arithmetic.

``pbhw train`` calls :func:`train`. Samples stream through the pipeline one per step across epoch
boundaries (the pipeline is drained only at the end, as hardware would run); after each epoch the
test set is evaluated with the current weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from golden.pipeline import Pipeline, initial_weights
from golden.sgd import SGDReference
from pbhw.config import Algorithm, Arith, Config
from pbhw.datasets import Dataset
from pbhw.datasets import load as load_dataset
from pbhw.plan import Plan, derive_plan

__all__ = ["EpochResult", "TrainResult", "TrainingDiverged", "make_arithmetic", "train"]

#: Divergence: a window mean of the loss this many times the first window's mean.
BLOWUP_FACTOR = 100.0
WINDOW = 200


class TrainingDiverged(RuntimeError):
    """The loss became non-finite or blew up; the message says where."""


@dataclass
class EpochResult:
    epoch: int
    train_loss: float  # mean loss of the samples streamed this epoch
    train_accuracy_stream: float  # accuracy of those (pipelined, in-flight) predictions
    test_accuracy: float
    seconds: float


@dataclass
class TrainResult:
    test_accuracy: float
    train_accuracy: float
    final_loss: float
    epochs: int
    samples: int
    samples_per_second: float
    dataset: str
    arith: str
    history: list[EpochResult] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        extra = out.pop("extra")
        out.update(extra)
        return out


def make_arithmetic(plan: Plan) -> Any:
    """The arithmetic strategy the config asks for."""
    cfg = plan.config
    if cfg.train.arith is Arith.FLOAT:
        from golden.float_arith import FloatArithmetic

        return FloatArithmetic(cfg.network.loss, cfg.optimizer.weight_prediction)
    from golden.fixed_arith import FixedArithmetic

    return FixedArithmetic(plan)


class _LossWatch:
    """Detects divergence: non-finite loss, or a window mean far above the first window's."""

    def __init__(self) -> None:
        self.window: list[float] = []
        self.baseline: float | None = None

    def add(self, loss: float, where: str) -> None:
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"training diverged at {where}: loss is {loss}; lower "
                "optimizer.lr or widen the formats"
            )
        self.window.append(loss)
        if len(self.window) == WINDOW:
            mean = sum(self.window) / WINDOW
            if self.baseline is None:
                self.baseline = max(mean, 1e-12)
            elif mean > BLOWUP_FACTOR * self.baseline:
                raise TrainingDiverged(
                    f"training diverged at {where}: mean loss {mean:.4g} over the last {WINDOW} "
                    f"samples is over {BLOWUP_FACTOR:g}x the first {WINDOW} samples' "
                    f"{self.baseline:.4g}; lower optimizer.lr"
                )
            self.window.clear()


def _accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((outputs.argmax(1) == labels).double().mean())


def train(
    config: Config,
    *,
    dataset: Dataset | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> TrainResult:
    """Train ``config`` on its dataset; raises :class:`TrainingDiverged` on divergence."""
    plan = derive_plan(config)
    data = dataset if dataset is not None else load_dataset(config.train.dataset)
    layers = config.network.layers
    if data.num_features != layers[0] or data.num_classes > layers[-1]:
        from pbhw.config import ConfigError

        raise ConfigError(
            f"network.layers {list(layers)} does not fit dataset {data.name}: it needs "
            f"{data.num_features} inputs and at least {data.num_classes} outputs"
        )
    gen = torch.Generator().manual_seed(config.seed)
    weights = initial_weights(plan)
    sgd_batch = config.optimizer.algorithm is Algorithm.SGD and config.train.arith is Arith.FLOAT
    if sgd_batch:
        model: Any = SGDReference(plan, weights)
    else:
        model = Pipeline(plan, make_arithmetic(plan), weights)
    watch = _LossWatch()
    history: list[EpochResult] = []
    train_seconds = 0.0
    n = data.x_train.shape[0]
    for epoch in range(1, config.train.epochs + 1):
        order = torch.randperm(n, generator=gen)
        losses: list[float] = []
        correct = 0
        start = time.perf_counter()
        if sgd_batch:
            bsz = plan.batch_size
            for i in range(0, n, bsz):
                idx = order[i : i + bsz]
                out, predicted = model.step(data.x_train[idx], data.y_train[idx])
                for j, loss in enumerate(out.tolist()):
                    watch.add(loss, f"epoch {epoch}, sample {i + j}")
                losses.extend(out.tolist())
                correct += int((predicted == data.y_train[idx]).sum())
        else:
            x_all, y_all = data.x_train[order], data.y_train[order].tolist()
            for i in range(n):
                done, _ = model.step(x_all[i], y_all[i])
                if done is not None:
                    watch.add(done.loss, f"epoch {epoch}, sample {done.sample}")
                    losses.append(done.loss)
                    correct += done.prediction == done.label
            if epoch == config.train.epochs:
                for done in model.drain():
                    watch.add(done.loss, f"drain, sample {done.sample}")
                    losses.append(done.loss)
                    correct += done.prediction == done.label
        seconds = time.perf_counter() - start
        train_seconds += seconds
        correct_frac = correct / max(1, len(losses))
        test_acc = _accuracy(model.evaluate(data.x_test), data.y_test)
        result = EpochResult(
            epoch, sum(losses) / max(1, len(losses)), correct_frac, test_acc, seconds
        )
        history.append(result)
        if on_epoch is not None:
            on_epoch(result)
    total = n * config.train.epochs
    return TrainResult(
        test_accuracy=history[-1].test_accuracy,
        train_accuracy=_accuracy(model.evaluate(data.x_train), data.y_train),
        final_loss=history[-1].train_loss,
        epochs=config.train.epochs,
        samples=total,
        samples_per_second=total / train_seconds if train_seconds > 0 else float("inf"),
        dataset=data.describe(),
        arith=config.train.arith.value,
        history=history,
        config=config.to_dict(),
        extra={
            "delays": [st.delay for st in plan.stages],
            "lr_batch": plan.lr,
            "momentum_batch": plan.momentum,
        },
    )
