"""The data movement of a conv stage on integer codes: windows, their fold, pooling windows.

The bit-exact model (:mod:`golden.fixed_arith`) computes a conv stage as matrix products of
integer codes (``docs/numerics.md``, "Conv stages"); this module only rearranges codes, it
never rounds. Arrays are numpy ``int64`` with a leading config dimension ``C`` and a sample
dimension ``B``: ``[C, B, ...]``. A 1-D stage runs as a 2-D one of height 1, as in
:mod:`golden.conv`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from golden.conv import _four_d, _padding, _pool_kernel, _stride
from pbhw.core.config import Pool
from pbhw.core.plan import StagePlan

__all__ = ["ConvGeometry", "col2im", "geometry", "im2col", "pool_windows", "unpool"]


@dataclass(frozen=True)
class ConvGeometry:
    """The shapes of a conv stage in the 2-D form."""

    in_shape: tuple[int, int, int]  # (C_in, H, W)
    conv_shape: tuple[int, int, int]  # (C_out, H_o, W_o): the convolution's output
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    pool: Pool
    window: tuple[int, int]  # the pooling window ((1, 2) in 1-D, (2, 2) in 2-D)

    @property
    def columns(self) -> int:
        """Rows of the windows' matrix: ``C_in x kernel^d`` (without the bias row)."""
        return self.in_shape[0] * self.kernel[0] * self.kernel[1]

    @property
    def positions(self) -> int:
        """Output positions of the convolution."""
        return self.conv_shape[1] * self.conv_shape[2]

    @property
    def pooled(self) -> tuple[int, int]:
        """Rows and columns of pooling windows (an odd last row or column is dropped)."""
        return self.conv_shape[1] // self.window[0], self.conv_shape[2] // self.window[1]


def geometry(stage: StagePlan) -> ConvGeometry:
    """The 2-D form of a conv stage's shapes."""
    sp = stage.spec
    assert sp is not None
    rank = len(stage.in_shape) - 1
    kernel = (1, sp.kernel) if rank == 1 else (sp.kernel, sp.kernel)
    stride, padding = _stride(stage), _padding(stage)
    return ConvGeometry(
        _four_d(stage.in_shape),
        _four_d(sp.conv_shape),
        kernel,
        (stride[0], stride[1]),
        (padding[0], padding[1]),
        sp.pool,
        (_pool_kernel(stage)[0], _pool_kernel(stage)[1]),
    )


@functools.cache
def _taps(g: ConvGeometry) -> tuple[tuple[int, int, slice, slice], ...]:
    """Every kernel offset ``(a, b)`` with the slices of the padded input it reads (made once
    per geometry)."""
    (kh, kw), (sh, sw) = g.kernel, g.stride
    ho, wo = g.conv_shape[1:]
    return tuple(
        (a, b, slice(a, a + sh * (ho - 1) + 1, sh), slice(b, b + sw * (wo - 1) + 1, sw))
        for a in range(kh)
        for b in range(kw)
    )


def im2col(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """The input's windows ``[C, B, C_in x kh x kw, positions]`` of flat inputs ``[C, B, n]``;
    a window's rows in the C-order of a weight ``[C_in, kh, kw]``, padding as code 0."""
    c, b = x.shape[:2]
    cin, h, w = g.in_shape
    ph, pw = g.padding
    xp = x.reshape(c, b, cin, h, w)
    if ph or pw:  # np.pad costs several times this at these sizes
        xp = np.zeros((c, b, cin, h + 2 * ph, w + 2 * pw), dtype=np.int64)
        xp[:, :, :, ph : ph + h, pw : pw + w] = x.reshape(c, b, cin, h, w)
    out = np.empty((c, b, cin, *g.kernel, *g.conv_shape[1:]), dtype=np.int64)
    for a, k, rows, cols in _taps(g):
        out[:, :, :, a, k] = xp[:, :, :, rows, cols]
    return out.reshape(c, b, g.columns, g.positions)


def col2im(columns: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """The transpose of :func:`im2col`: every window element added (exactly) onto the input
    position it was read from; ``[C, B, n]``."""
    c, b = columns.shape[:2]
    cin, h, w = g.in_shape
    ph, pw = g.padding
    cols = columns.reshape(c, b, cin, *g.kernel, *g.conv_shape[1:])
    xp = np.zeros((c, b, cin, h + 2 * ph, w + 2 * pw), dtype=np.int64)
    for a, k, rows, cs in _taps(g):
        xp[:, :, :, rows, cs] += cols[:, :, :, a, k]
    return xp[:, :, :, ph : ph + h, pw : pw + w].reshape(c, b, -1)


def pool_windows(z: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """``[C, B, C_out, pooled positions, window]`` of ``z`` ``[C, B, C_out, positions]``: each
    window's elements in row-major order, the windows in the C-order of the pooled output."""
    c, b, o = z.shape[:3]
    (wh, ww), (ph, pw) = g.window, g.pooled
    z5 = z.reshape(c, b, o, *g.conv_shape[1:])[:, :, :, : ph * wh, : pw * ww]
    z7 = z5.reshape(c, b, o, ph, wh, pw, ww).transpose(0, 1, 2, 3, 5, 4, 6)
    return z7.reshape(c, b, o, ph * pw, wh * ww)


def unpool(windows: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """The transpose of :func:`pool_windows`: ``[C, B, C_out, positions]``, 0 at the dropped
    last row or column."""
    c, b, o = windows.shape[:3]
    (wh, ww), (ph, pw) = g.window, g.pooled
    ho, wo = g.conv_shape[1:]
    z7 = windows.reshape(c, b, o, ph, pw, wh, ww).transpose(0, 1, 2, 3, 5, 4, 6)
    out = np.zeros((c, b, o, ho, wo), dtype=windows.dtype)
    out[:, :, :, : ph * wh, : pw * ww] = z7.reshape(c, b, o, ph * wh, pw * ww)
    return out.reshape(c, b, o, ho * wo)
