"""Float64 arithmetic of a convolutional stage: forward, backward and weight gradient.

A conv stage (:attr:`pbhw.core.plan.StagePlan.conv`) computes, for a batch of samples that
arrive flattened (rows of ``n_in`` values) and leave flattened (rows of ``n_out``):

1. ``c = conv(x, weight) + bias`` (1-D or 2-D by the rank of the stage's input shape);
2. with group norm, ``n = (c - mean) * rstd * norm_scale + norm_shift``, the mean and variance
   taken per sample over each group of channels and every position (:data:`NORM_EPS`); with
   online norm (:class:`OnlineStats`, float only), ``n = clamp(y * norm_scale + norm_shift)``
   with ``y = (c - mu) / sqrt(var + NORM_EPS)`` per channel, ``mu`` and ``var`` the running
   statistics of the samples before; else ``n = c``;
3. with a residual, ``z = n + r``: ``r`` is the output of the stage ``residual`` entries before
   (a 1x1 ``projection`` with its bias first, when configured); else ``z = n``;
4. ``a = relu(z)`` (every stage but the last), then the pooling.

The backward of an error ``e`` at the output gives the error sent to the previous stage, the
error sent back along the residual to its source stage, and the gradient of every parameter,
summed over the batch. A 1-D stage runs as a 2-D one of height 1. Every parameter of a stage
lives in one flat float64 vector (:class:`ConvState`), in the order of
:attr:`pbhw.core.plan.StagePlan.parameter_shapes`, so that one update rule covers them all;
forward and backward take the parameters as named views of such a vector
(:func:`split_parameters`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pbhw.core.config import Norm, Pool
from pbhw.core.plan import StagePlan

__all__ = [
    "NORM_EPS",
    "ConvContext",
    "ConvState",
    "OnlineStats",
    "conv_backward",
    "conv_forward",
    "split_parameters",
]

#: Added to the variance of group norm (as PyTorch's default).
NORM_EPS = 1e-5

_aten = torch.ops.aten


def _four_d(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(channels, height, width)`` of a sample shape ``(C, L)`` or ``(C, H, W)``."""
    return (shape[0], 1, shape[1]) if len(shape) == 2 else (shape[0], shape[1], shape[2])


def _stride(stage: StagePlan) -> list[int]:
    """The convolution's stride in the 2-D form (``[1, stride]`` for a 1-D stage)."""
    s = stage.spec.stride  # type: ignore[union-attr]
    return [1, s] if len(stage.in_shape) == 2 else [s, s]


def _padding(stage: StagePlan) -> list[int]:
    """The convolution's padding in the 2-D form (``[0, padding]`` for a 1-D stage)."""
    s = stage.spec.padding  # type: ignore[union-attr]
    return [0, s] if len(stage.in_shape) == 2 else [s, s]


def _projection_stride(stage: StagePlan) -> list[int]:
    """The residual projection's stride in the 2-D form."""
    s = list(stage.spec.projection_stride)  # type: ignore[union-attr]
    return [1, *s] if len(s) == 1 else s


def split_parameters(stage: StagePlan, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views of ``flat`` as the stage's parameters, by name; weights in their 4-D form."""
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for name, shape in stage.parameter_shapes:
        size = math.prod(shape)
        view = flat[offset : offset + size]
        if len(shape) == 3:  # a 1-D convolution's [C_out, C_in, k] as [C_out, C_in, 1, k]
            shape = (shape[0], shape[1], 1, shape[2])
        out[name] = view.view(shape)
        offset += size
    return out


class ConvState:
    """A conv stage's parameters in one flat vector ``wa`` with its velocity ``va`` (and, for
    the weight-difference prediction, ``wa_prev``: the parameters before the last update).

    ``params`` are named views of ``wa`` (:func:`split_parameters`), made once: every update
    changes ``wa`` in place. ``predicted`` is a buffer for the predicted parameters, with its
    own views ``predicted_params``."""

    def __init__(self, stage: StagePlan, params: tuple[torch.Tensor, ...], keep_previous: bool):
        self.stage = stage
        self.wa = torch.cat([p.to(torch.float64).reshape(-1) for p in params])
        self.va = torch.zeros_like(self.wa)
        self.wa_prev = self.wa.clone() if keep_previous else None
        self.params = split_parameters(stage, self.wa)
        self.predicted = torch.empty_like(self.wa)
        self.predicted_params = split_parameters(stage, self.predicted)
        spec = stage.spec
        #: Online Normalization's running state (None without it): not a parameter, so
        #: neither stashed, predicted nor updated by the optimizer
        self.online = (
            OnlineStats(spec.out) if spec is not None and spec.norm is Norm.ONLINE else None
        )

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Copies of the parameters in their configured shapes."""
        return tuple(
            view.reshape(shape).clone()
            for view, (_, shape) in zip(
                self.params.values(), self.stage.parameter_shapes, strict=True
            )
        )


class OnlineStats:
    """Online Normalization's state of one stage, per output channel (Chiley et al., 2019).

    The forward of each sample, in the order the samples stream through the stage, normalizes
    with the statistics of the samples before it, then folds its own in (decay
    ``alpha_fwd``)::

        y = (c - mean) / sqrt(var + NORM_EPS)
        var  <- a var + (1 - a) var(c) + a (1 - a) (mu(c) - mean)^2
        mean <- mean + (1 - a) (mu(c) - mean)

    (``mu(c)``, ``var(c)``: the sample's mean and variance over the channel's positions). The
    backward of each sample, in the order the errors arrive, removes the error's components
    along ``y`` and along the constant, as estimated by the samples before (decay
    ``alpha_bkw``)::

        g <- g - (1 - b) v y;     v <- v + mu(g y)
        g <- g / sqrt(var + NORM_EPS) (the forward's);  g <- g - (1 - b) u;  u <- u + mu(g)

    The learned scale and shift follow ``y``, then the activation clamp to ``[-clamp,
    clamp]`` (its backward: no error where the clamp held)."""

    def __init__(self, channels: int):
        self.mean = torch.zeros(channels, dtype=torch.float64)
        self.var = torch.ones(channels, dtype=torch.float64)
        self.u = torch.zeros(channels, dtype=torch.float64)
        self.v = torch.zeros(channels, dtype=torch.float64)

    def normalize(
        self, c: torch.Tensor, alpha: float, learn: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``y`` of the samples ``c [B, C, H, W]`` (one after another, the statistics folded
        in after each when ``learn``) and each sample's deviation ``[B, C]``."""
        if not learn:  # evaluation: the statistics as they stand, for every sample
            scale = torch.sqrt(self.var + NORM_EPS)
            return (c - self.mean[:, None, None]) / scale[:, None, None], scale.expand(
                c.shape[0], -1
            )
        mu = c.mean((2, 3))
        var = (c - mu[:, :, None, None]).square().mean((2, 3))
        centers, scales = [], []
        for b in range(c.shape[0]):
            centers.append(self.mean.clone())
            scales.append(torch.sqrt(self.var + NORM_EPS))
            step = mu[b] - self.mean
            self.var = alpha * self.var + (1 - alpha) * var[b] + alpha * (1 - alpha) * step**2
            self.mean = self.mean + (1 - alpha) * step
        center, scale = torch.stack(centers), torch.stack(scales)
        return (c - center[:, :, None, None]) / scale[:, :, None, None], scale

    def backward(
        self, g: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, beta: float
    ) -> torch.Tensor:
        """The error at ``c`` of the errors ``g`` at ``y`` (``[B, C, H, W]``, one sample after
        another), ``scale`` the forward's deviations ``[B, C]``."""
        out = torch.empty_like(g)
        for b in range(g.shape[0]):
            grad = g[b] - (1 - beta) * self.v[:, None, None] * y[b]
            self.v = self.v + (grad * y[b]).mean((1, 2))
            grad = grad / scale[b][:, None, None]
            out[b] = grad - (1 - beta) * self.u[:, None, None]
            self.u = self.u + out[b].mean((1, 2))
        return out


@dataclass
class ConvContext:
    """What the backward of one forward needs (the stash entry besides the input)."""

    conv: torch.Tensor | None  # the convolution's output (group norm only)
    mean: torch.Tensor | None
    rstd: torch.Tensor | None
    #: the ReLU's output (None for the last stage): relu'(z) is 1 where it is positive
    mask: torch.Tensor | None
    residual: torch.Tensor | None  # the residual's input (projection only)
    pool_index: torch.Tensor | None  # max pooling's choices
    #: the input's windows ``[B, C_in x kernel^d, positions]`` (im2col), which the weight
    #: gradient multiplies (they stand for the stashed input)
    columns: torch.Tensor | None = None
    #: online norm: the normalized values, each sample's deviation per channel, and where the
    #: clamp held
    online_y: torch.Tensor | None = None
    online_scale: torch.Tensor | None = None
    clamped: torch.Tensor | None = None


def conv_forward(
    stage: StagePlan,
    p: dict[str, torch.Tensor],
    x: torch.Tensor,
    residual: torch.Tensor | None,
    online: OnlineStats | None = None,
    learn: bool = True,
) -> tuple[torch.Tensor, ConvContext]:
    """Outputs ``[B, n_out]`` of inputs ``x`` ``[B, n_in]`` with parameters ``p``
    (:func:`split_parameters`), adding ``residual`` (``[B, n]`` of the source's output) when the
    stage has one. With online norm, ``online`` is the stage's state; ``learn`` folds the
    samples into its statistics (training), else they are only read (evaluation)."""
    sp = stage.spec
    assert sp is not None
    batch = x.shape[0]
    x4 = x.reshape(batch, *_four_d(stage.in_shape))
    # The convolution as one product with the input's windows (im2col): at batch 1 this is
    # several times faster than PyTorch's float64 convolution, forward and backward.
    columns = torch.nn.functional.unfold(
        x4, p["weight"].shape[2:], padding=_padding(stage), stride=_stride(stage)
    )
    weight = p["weight"].reshape(sp.out, -1)
    if batch == 1:  # plain matrix products: a batched one costs several times more here
        c = (
            weight @ columns[0]
            if not stage.bias
            else torch.addmm(p["bias"][:, None], weight, columns[0])
        )
    else:
        c = torch.matmul(weight, columns)
        if stage.bias:
            c += p["bias"][:, None]
    c = c.reshape(batch, *_four_d(sp.conv_shape))
    conv_kept = mean = rstd = online_y = online_scale = clamped = None
    if sp.norm is Norm.ONLINE:
        assert online is not None, "online norm needs the stage's OnlineStats"
        online_y, online_scale = online.normalize(c, sp.alpha_fwd, learn)
        z = online_y * p["norm_scale"][:, None, None] + p["norm_shift"][:, None, None]
        z = z.clamp(-sp.clamp, sp.clamp)
        clamped = (z == sp.clamp) | (z == -sp.clamp)
    elif sp.norm is Norm.GROUP:
        channels, height, width = c.shape[1:]
        z, mean, rstd = _aten.native_group_norm(
            c, p["norm_scale"], p["norm_shift"], batch, channels, height * width, sp.groups,
            NORM_EPS,
        )  # fmt: skip
        conv_kept = c
    else:
        z = c
    kept_residual = None
    if sp.residual:
        assert residual is not None
        r4 = residual.reshape(batch, *_four_d(stage.residual_shape))
        if sp.projection:
            r4 = torch.nn.functional.conv2d(
                r4, p["projection"], p.get("projection_bias"), _projection_stride(stage)
            )
            kept_residual = residual
        z = z + r4
    mask = None
    if stage.relu:
        z = mask = torch.relu(z)
    index = None
    if sp.pool is Pool.AVG:
        z = torch.nn.functional.avg_pool2d(z, _pool_kernel(stage))
    elif sp.pool is Pool.MAX:
        z, index = torch.nn.functional.max_pool2d(z, _pool_kernel(stage), return_indices=True)
    elif sp.pool is Pool.GLOBAL_AVG:
        z = z.mean((2, 3))
    return z.reshape(batch, -1), ConvContext(
        conv_kept, mean, rstd, mask, kept_residual, index, columns, online_y, online_scale,
        clamped,
    )  # fmt: skip


def _pool_kernel(stage: StagePlan) -> list[int]:
    return [1, 2] if len(stage.in_shape) == 2 else [2, 2]


def conv_backward(
    stage: StagePlan,
    p: dict[str, torch.Tensor],
    x: torch.Tensor,
    ctx: ConvContext,
    error: torch.Tensor,
    need_input_error: bool,
    online: OnlineStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The backward of one forward (input ``x`` and ``ctx``) with parameters ``p`` (and, with
    online norm, the stage's state ``online``, whose error compensation it advances).

    Returns the gradient of every parameter (flat, summed over the batch), the error at the
    input ``[B, n_in]`` (None unless ``need_input_error``) and the error sent along the residual
    ``[B, n]`` of its source's output (None without a residual)."""
    sp = stage.spec
    assert sp is not None
    batch = x.shape[0]
    conv4 = (batch, *_four_d(sp.conv_shape))
    if sp.pool is Pool.NONE:
        d = error.reshape(conv4)
    elif sp.pool is Pool.GLOBAL_AVG:
        d = (error / (conv4[2] * conv4[3]))[:, :, None, None].expand(conv4)
    elif sp.pool is Pool.AVG:
        kernel = _pool_kernel(stage)
        grad = error.reshape(batch, conv4[1], -1, conv4[3] // 2)
        d = _aten.avg_pool2d_backward(
            grad, torch.empty(conv4, dtype=error.dtype), kernel, kernel, [0, 0], False, True, None
        )
    else:
        assert ctx.pool_index is not None
        d = torch.zeros(batch, conv4[1], conv4[2] * conv4[3], dtype=error.dtype)
        d.scatter_(
            2, ctx.pool_index.reshape(batch, conv4[1], -1), error.reshape(batch, conv4[1], -1)
        )
        d = d.reshape(conv4)
    if ctx.mask is not None:
        d = _aten.threshold_backward(d, ctx.mask, 0)  # d where the output is positive, else 0
    grads: dict[str, torch.Tensor] = {}
    residual_error = None
    if sp.residual:
        if sp.projection:
            stride = _projection_stride(stage)
            r4 = ctx.residual.reshape(batch, *_four_d(stage.residual_shape))  # type: ignore[union-attr]
            weight = p["projection"]
            dr, grads["projection"], db = _aten.convolution_backward(
                d, r4, weight, [weight.shape[0]] if stage.bias else None, stride, [0, 0], [1, 1],
                False, [0, 0], 1, [True, True, stage.bias],
            )  # fmt: skip
            if stage.bias:
                grads["projection_bias"] = db
            residual_error = dr.reshape(batch, -1)
        else:
            residual_error = d.reshape(batch, -1)
    if sp.norm is Norm.ONLINE:
        assert online is not None and ctx.online_y is not None and ctx.clamped is not None
        d = d.masked_fill(ctx.clamped, 0.0)
        grads["norm_scale"] = (d * ctx.online_y).sum((0, 2, 3))
        grads["norm_shift"] = d.sum((0, 2, 3))
        d = online.backward(
            d * p["norm_scale"][:, None, None], ctx.online_y, ctx.online_scale, sp.alpha_bkw
        )
    elif sp.norm is Norm.GROUP:
        channels, height, width = conv4[1:]
        d, grads["norm_scale"], grads["norm_shift"] = _aten.native_group_norm_backward(
            d, ctx.conv, ctx.mean, ctx.rstd, p["norm_scale"], batch, channels, height * width,
            sp.groups, [True, True, True],
        )  # fmt: skip
    # The convolution's backward on the stashed windows: weight gradient = error x windows,
    # input error = the windows' error (weights' transpose x error) folded back (col2im).
    assert ctx.columns is not None
    weight = p["weight"].reshape(sp.out, -1)
    d3 = d.reshape(batch, sp.out, -1)
    if batch == 1:
        grads["weight"] = d3[0] @ ctx.columns[0].T
    else:
        grads["weight"] = torch.matmul(d3, ctx.columns.transpose(1, 2)).sum(0)
    if stage.bias:
        grads["bias"] = d3.sum((0, 2))
    dx = None
    if need_input_error:
        d_columns = (weight.T @ d3[0])[None] if batch == 1 else torch.matmul(weight.T, d3)
        dx = torch.nn.functional.fold(
            d_columns,
            _four_d(stage.in_shape)[1:],
            p["weight"].shape[2:],
            padding=_padding(stage),
            stride=_stride(stage),
        ).reshape(batch, -1)
    flat_grad = torch.cat([grads[name].reshape(-1) for name, _ in stage.parameter_shapes])
    return flat_grad, dx, residual_error
