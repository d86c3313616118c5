"""pbhw: co-design FPGA hardware that trains neural networks with Pipelined Backpropagation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pbhw.core.config import Config

__version__ = "0.1.0"
__all__ = ["__version__", "from_torch"]


def from_torch(model: Any, input_shape: int | Sequence[int], **settings: Any) -> Config:
    """The pbhw config of an ``nn.Sequential`` of ``nn.Linear`` and ``nn.ReLU``; see
    :func:`pbhw.core.torch_io.from_torch`."""
    # Imported on call: every pbhw module (the CLI included) imports this package first, and
    # torch takes seconds to import; `pbhw --help` and `pbhw check` should not pay for it.
    from pbhw.core.torch_io import from_torch as implementation

    return implementation(model, input_shape, **settings)
