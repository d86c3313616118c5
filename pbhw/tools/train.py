"""Training on real data with the PB schedule (or the SGD reference) in the chosen arithmetic.

``pbhw train`` calls :func:`train`. Samples stream through the pipeline one per step across epoch
boundaries (the pipeline is drained only at the end, as hardware would run); after each epoch the
test set is evaluated with the current weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from golden.fixed_arith import FixedArithmetic, FixedConvState
from golden.float_arith import FloatArithmetic
from golden.pipeline import Pipeline
from golden.sgd import SGDReference
from pbhw.core.config import ROLES, Algorithm, Arith, Config, ConfigError
from pbhw.core.datasets import Dataset
from pbhw.core.datasets import load as load_dataset
from pbhw.core.errors import TrainingDiverged
from pbhw.core.fixed import to_float
from pbhw.core.plan import Plan, derive_plan
from pbhw.core.torch_io import read_checkpoint
from pbhw.core.weights import initial_weights

__all__ = [
    "EpochResult",
    "TrainResult",
    "TrainingDiverged",
    "check_fits",
    "check_trainable",
    "epoch_orders",
    "make_arithmetic",
    "train",
    "train_many",
]

#: Divergence: a window mean of the loss this many times the first window's mean.
BLOWUP_FACTOR = 100.0
WINDOW = 200


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
    #: the trained float64 weights per stage ``(w [n_out, n_in], b [n_out] or None)``; in
    #: fixed point the codes' values (code x 2^-frac); not part of the JSON
    weights: list[tuple[torch.Tensor, torch.Tensor | None]] = field(
        default_factory=list, repr=False, compare=False
    )

    def to_json(self) -> dict[str, Any]:
        weights, self.weights = self.weights, []
        try:
            out = asdict(self)
        finally:
            self.weights = weights
        out.pop("weights")
        extra = out.pop("extra")
        out.update(extra)
        return out


def epoch_orders(seed: int, n: int, epochs: int) -> Iterator[torch.Tensor]:
    """The sample order of each epoch: a permutation of the ``n`` training samples per epoch, from
    one generator seeded with ``seed`` (``pbhw verify --epochs`` streams the same order)."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        yield torch.randperm(n, generator=gen)


def make_arithmetic(plan: Plan) -> Any:
    """The arithmetic strategy the config asks for."""
    cfg = plan.config
    if cfg.train.arith is Arith.FLOAT:
        return FloatArithmetic(cfg.network.loss, cfg.optimizer.weight_prediction)
    return FixedArithmetic(plan)


class _LossWatch:
    """Detects divergence: non-finite loss, or a window mean far above the first window's."""

    def __init__(self) -> None:
        self.window: list[float] = []
        self.baseline: float | None = None

    def add(self, loss: float, epoch: int, sample: int) -> None:
        if not math.isfinite(loss):
            where = f"epoch {epoch}, sample {sample}"
            raise TrainingDiverged(
                f"training diverged at {where}: loss is {loss}; lower "
                "optimizer.lr or widen the formats"
            )
        self.window.append(loss)
        if len(self.window) == WINDOW:
            self._close(epoch, sample)

    def extend(self, losses: list[float], epoch: int, samples: list[int]) -> None:
        """:meth:`add` of each of ``losses`` in order (``samples``: their sample numbers), a
        window at a time: the same windows, sums and first failure as one call per loss."""
        finite = np.isfinite(np.asarray(losses, dtype=np.float64))
        bad = len(losses) if finite.all() else int(np.argmin(finite))
        position = 0
        while position < len(losses):
            end = min(position + WINDOW - len(self.window), len(losses))
            if bad < end:  # before the window fills: the losses before it, then it raises
                self.window.extend(losses[position:bad])
                self.add(losses[bad], epoch, samples[bad])
            self.window.extend(losses[position:end])
            position = end
            if len(self.window) == WINDOW:
                self._close(epoch, samples[end - 1])

    def _close(self, epoch: int, sample: int) -> None:
        """A full window: the first sets the baseline, a later one far above it raises."""
        mean = sum(self.window) / WINDOW
        if self.baseline is None:
            self.baseline = max(mean, 1e-12)
        elif mean > BLOWUP_FACTOR * self.baseline:
            where = f"epoch {epoch}, sample {sample}"
            raise TrainingDiverged(
                f"training diverged at {where}: mean loss {mean:.4g} over the last {WINDOW} "
                f"samples is over {BLOWUP_FACTOR:g}x the first {WINDOW} samples' "
                f"{self.baseline:.4g}; lower optimizer.lr"
            )
        self.window.clear()


def _accuracies(outputs: Any, labels: torch.Tensor) -> list[float]:
    """Accuracy per config of outputs ``[N, K]`` (one config) or ``[C, N, K]``."""
    out = np.asarray(outputs)
    if out.ndim == 2:
        out = out[None]
    return [float(a) for a in (out.argmax(-1) == labels.numpy()[None]).mean(1)]


def check_fits(config: Config, data: Dataset) -> None:
    """Raise :class:`ConfigError` unless the network's input and output sizes fit ``data``."""
    layers = config.network.layers
    if data.num_features != layers[0] or data.num_classes > layers[-1]:
        raise ConfigError(
            f"network.layers {list(layers)} does not fit dataset {data.name}: it needs "
            f"{data.num_features} inputs and at least {data.num_classes} outputs"
        )
    shape = config.network.input
    if shape not in ((data.num_features,), data.sample_shape):
        raise ConfigError(
            f"config key 'network.input' {list(shape)} does not fit dataset {data.name}: its "
            f"samples are {list(data.sample_shape)} (or {[data.num_features]} flattened)"
        )


def check_trainable(config: Config, datasets: dict[str, Dataset] | None = None) -> Dataset:
    """What the trainer would reject only once running: a checkpoint (``train.init_from``) that
    cannot be read or does not fit the network, unrepresentable constants, accumulators
    wider than the bit-exact model supports, a dataset that cannot be loaded or that the network
    does not fit. Returns the dataset.

    ``datasets`` caches the loaded datasets by spec across calls."""

    plan = derive_plan(config)
    if config.train.init_from and config.network.convolutional:
        raise ConfigError(
            "config key 'train.init_from': starting from a PyTorch checkpoint takes dense "
            "layers only; convolutional stages start from the seed"
        )
    if config.train.init_from:
        read_checkpoint(config)
    if config.train.arith is Arith.FIXED:
        FixedArithmetic(plan)
    datasets = {} if datasets is None else datasets
    spec = config.train.dataset
    if spec not in datasets:
        datasets[spec] = load_dataset(spec)
    check_fits(config, datasets[spec])
    return datasets[spec]


def train(
    config: Config,
    *,
    dataset: Dataset | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> TrainResult:
    """Train ``config`` on its dataset; raises :class:`TrainingDiverged` on divergence."""
    return train_many([config], dataset=dataset, on_epoch=on_epoch)[0]


def train_many(
    configs: Sequence[Config],
    *,
    dataset: Dataset | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> list[TrainResult]:
    """Train several fixed-point configs that differ only in formats, rounding or update
    constants in one vectorised run (one config: an ordinary run, float or fixed).

    Results are exactly those of training each config alone. In a run of several configs a
    diverging config is reported in its result (``diverged``) instead of stopping the others.

    A network with convolutional stages trains with one PyTorch thread, its batch-1
    convolutions being too small to share (on 2 cores, 6.2 ms a step with 2 threads against 1.2
    ms with one), and in ``torch.inference_mode`` (no autograd bookkeeping on its many small
    operations: a quarter less time per step, the same values); its trained weights are
    returned as ordinary tensors. A fixed-point run trains with one PyTorch thread too: it uses
    PyTorch only to quantize its inputs, a few large operations that two threads make slower on
    a busy machine (one quantization of the digits training set, 92k values, took 0.15-0.32 s
    with 2 threads against 3-8 ms with one, on 2 cores with the other busy).
    """
    if not configs:
        raise ValueError("train_many needs at least one config")
    plans = [derive_plan(c) for c in configs]  # once per config: a sweep's setup scales with it
    # Configs with the same rounding modes side by side: each mode's rows of the integer
    # model's arrays are then one slice (a view) instead of gathered rows. Results come back in
    # the callers' order.
    order = sorted(range(len(configs)), key=lambda c: _rounding_modes(plans[c]))
    results = _train_grouped(
        [configs[c] for c in order], [plans[c] for c in order], dataset, on_epoch
    )
    back = [0] * len(order)
    for position, c in enumerate(order):
        back[c] = position
    return [results[back[c]] for c in range(len(configs))]


def _train_grouped(
    configs: Sequence[Config],
    plans: Sequence[Plan],
    dataset: Dataset | None,
    on_epoch: Callable[[EpochResult], None] | None,
) -> list[TrainResult]:
    """:func:`train_many` of configs in their grouped order, with their plans."""
    convolutional = configs[0].network.convolutional
    if not convolutional and configs[0].train.arith is not Arith.FIXED:
        return _train_many(configs, plans, dataset, on_epoch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if not convolutional:
            return _train_many(configs, plans, dataset, on_epoch)
        with torch.inference_mode():
            results = _train_many(configs, plans, dataset, on_epoch)
    finally:
        torch.set_num_threads(threads)
    for result in results:  # clones made outside inference mode are ordinary tensors
        result.weights = [
            tuple(None if t is None else t.clone() for t in stage) for stage in result.weights
        ]
    return results


def _rounding_modes(plan: Plan) -> tuple[str, ...]:
    """Every role's rounding mode of every stage (what groups configs in a batched run)."""
    return tuple(st.formats.role(role).rounding.value for st in plan.stages for role in ROLES)


def _train_many(
    configs: Sequence[Config],
    plans: Sequence[Plan],
    dataset: Dataset | None,
    on_epoch: Callable[[EpochResult], None] | None,
) -> list[TrainResult]:
    config = configs[0]
    plan = plans[0]
    many = len(configs) > 1
    if many and any(c.train.arith is not Arith.FIXED for c in configs):
        raise ConfigError("configs trained together must use train.arith = 'fixed'")
    data = dataset if dataset is not None else load_dataset(config.train.dataset)
    check_fits(config, data)
    weights = initial_weights(plan)
    sgd_batch = config.optimizer.algorithm is Algorithm.SGD and config.train.arith is Arith.FLOAT
    arith = None
    if sgd_batch:
        model: Any = SGDReference(plan, weights)
    else:
        arith = FixedArithmetic(plans) if many else make_arithmetic(plan)
        model = Pipeline(plan, arith, weights)
    count = len(configs)
    watches = [_LossWatch() for _ in range(count)]
    diverged: list[str | None] = [None] * count
    histories: list[list[EpochResult]] = [[] for _ in range(count)]
    train_seconds = 0.0
    n = data.x_train.shape[0]

    def observe(losses_now: Any, predictions: Any, label: int, epoch: int, sample: Any) -> None:
        """One finished sample of a single-config run (a divergence stops the run)."""
        if isinstance(losses_now, float):  # the common float case
            loss, pred = losses_now, predictions
        else:
            (loss,), (pred,) = _per_config(losses_now), _per_config(predictions)
        loss = float(loss)
        losses[0].append(loss)
        correct[0] += int(pred) == label
        watches[0].add(loss, epoch, sample)

    def observe_all(finished: list, epoch: int) -> None:
        """:func:`observe` of each of several configs' finished samples, a config at a time."""
        rows = np.stack([np.asarray(done.loss, dtype=np.float64) for done in finished])
        predicted = np.stack([np.asarray(done.prediction) for done in finished])
        labels = np.array([done.label for done in finished])
        samples = [done.sample for done in finished]
        for c in range(count):
            column = rows[:, c].tolist()
            losses[c].extend(column)
            correct[c] += int((predicted[:, c] == labels).sum())
            if diverged[c] is None:
                try:
                    watches[c].extend(column, epoch, samples)
                except TrainingDiverged as e:
                    diverged[c] = str(e)

    orders = epoch_orders(config.seed, n, config.train.epochs)
    for epoch, order in enumerate(orders, start=1):
        losses: list[list[float]] = [[] for _ in range(count)]
        correct = [0] * count
        start = time.perf_counter()
        if sgd_batch:
            bsz = plan.batch_size
            for i in range(0, n, bsz):
                idx = order[i : i + bsz]
                out, predicted = model.step(data.x_train[idx], data.y_train[idx])
                for j, (loss, pred) in enumerate(
                    zip(out.tolist(), predicted.tolist(), strict=True)
                ):
                    observe(loss, pred, int(data.y_train[idx[j]]), epoch, i + j)
        else:
            x_all, y_all = data.x_train[order], data.y_train[order].tolist()
            encoded = arith.encode_inputs(x_all)
            finished: list = []  # several configs: observed together at the epoch's end
            for i in range(n):
                if encoded is None:
                    done, _ = model.step(x_all[i], y_all[i])
                else:
                    done, _ = model.step(None, y_all[i], encoded=encoded[i])
                if done is not None:
                    if many:
                        finished.append(done)
                    else:
                        observe(done.loss, done.prediction, done.label, epoch, done.sample)
            if epoch == config.train.epochs:
                for done in model.drain():
                    if many:
                        finished.append(done)
                    else:
                        observe(done.loss, done.prediction, done.label, epoch, done.sample)
            if finished:
                observe_all(finished, epoch)
        seconds = time.perf_counter() - start
        train_seconds += seconds
        test_acc = _accuracies(model.evaluate(data.x_test), data.y_test)
        for c in range(count):
            result = EpochResult(
                epoch,
                sum(losses[c]) / max(1, len(losses[c])),
                correct[c] / max(1, len(losses[c])),
                test_acc[c],
                seconds,
            )
            histories[c].append(result)
            if on_epoch is not None and not many:
                on_epoch(result)
        if many and on_epoch is not None:
            on_epoch(EpochResult(epoch, float("nan"), float("nan"), max(test_acc), seconds))
    total = n * config.train.epochs
    train_out = np.asarray(model.evaluate(data.x_train))
    train_acc = _accuracies(train_out, data.y_train)
    # A collapsed network (dead ReLUs, constant output) predicts one class for everything; its
    # loss stays finite, so the divergence watch cannot see it.
    predicted = (train_out if train_out.ndim == 3 else train_out[None]).argmax(-1)
    collapsed = [len(np.unique(row)) == 1 for row in predicted]
    counts = arith.saturation_counts() if isinstance(arith, FixedArithmetic) else None
    results = []
    for c, (cfg, p) in enumerate(zip(configs, plans, strict=True)):
        extra: dict[str, Any] = {
            "delays": [st.delay for st in p.stages],
            "lr_batch": p.lr,
            "momentum_batch": p.momentum,
            "collapsed": collapsed[c],
        }
        if counts is not None:
            extra["formats"] = _formats_json(p)
            extra["saturation"] = {key: values[c] for key, values in counts.items()}
            extra["saturation_total"] = sum(values[c] for values in counts.values())
        if many:
            extra["diverged"] = diverged[c]
            extra["batched_configs"] = count
        results.append(
            TrainResult(
                test_accuracy=histories[c][-1].test_accuracy,
                train_accuracy=train_acc[c],
                final_loss=histories[c][-1].train_loss,
                epochs=cfg.train.epochs,
                samples=total,
                samples_per_second=total / train_seconds if train_seconds > 0 else float("inf"),
                dataset=data.describe(),
                arith=cfg.train.arith.value,
                history=histories[c],
                config=cfg.to_dict(),
                extra=extra,
                weights=_trained_weights(model, p, c),
            )
        )
    return results


def _per_config(x: Any) -> list:
    """A value per config (an array, or a scalar for one config) as a list of Python numbers."""
    return x.reshape(-1).tolist() if isinstance(x, np.ndarray) else np.atleast_1d(x).tolist()


def _trained_weights(
    model: Any, plan: Plan, c: int
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Config ``c``'s weights now, float64 per stage ``(w, b)``: fixed-point codes as their
    values (code x 2^-frac of the stage's weight format). A conv stage gives the tuple of its
    parameters (:attr:`pbhw.core.plan.StagePlan.parameter_shapes`)."""
    states = model.states if isinstance(model, SGDReference) else [s.state for s in model.stages]
    out: list = []
    for st, state in zip(plan.stages, states, strict=True):
        if st.conv:
            out.append(state.tensors(c) if isinstance(state, FixedConvState) else state.tensors())
            continue
        if isinstance(state.w, np.ndarray):  # the bit-exact model: codes [C, N_out, N_in (+1)]
            wa = to_float(torch.from_numpy(state.w[c].copy()), st.formats.weight.format)
        else:
            wa = state.wa.detach().to(torch.float64).clone()
        if plan.config.network.bias:
            out.append((wa[:, : st.n_in].clone(), wa[:, st.n_in].clone()))
        else:
            out.append((wa, None))
    return out


def _formats_json(plan: Plan) -> list[dict[str, Any]]:
    """Per stage: every role's format, rounding and overflow, and the constants' codes."""
    out = []
    for st in plan.stages:
        entry: dict[str, Any] = {"stage": st.index}
        for role in ROLES:
            rf = st.formats.role(role)
            entry[role] = {
                "format": str(rf.format),
                "rounding": rf.rounding.value,
                "overflow": rf.overflow.value,
            }
        entry["constants"] = {name: c.code for name, c in st.coefficients.items()}
        out.append(entry)
    return out
