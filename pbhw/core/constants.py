"""Numeric constants that the golden model and the hardware share, defined once.

* The stochastic-rounding streams: every rounding point draws its random words from the stream
  ``16 * stage + role`` (``docs/numerics.md``); :data:`ROLE_NUMBERS` numbers the roles.
* :data:`EVAL_STEP`: the step number of random words drawn outside the pipeline (evaluation).
* The softmax unit's constants (``docs/numerics.md``, softmax cross-entropy): ``log2(e)`` with 16
  fractional bits, and the table of ``2^(j/256)`` with 15.
"""

from __future__ import annotations

import math

from pbhw.core.fixed import FixedFormat, Rounding, quantize

__all__ = ["EVAL_STEP", "EXP2_TABLE", "LOG2E_Q16", "ROLE_NUMBERS", "stream_id"]

#: Role numbers of the stochastic-rounding streams: ``stream = 16 * stage + role``.
ROLE_NUMBERS = {
    "input": 0,
    "activation": 1,
    "error": 2,
    "gradient": 3,
    "velocity": 4,
    "weight": 5,
    "prediction": 6,
    "loss": 7,
    # conv stages (docs/numerics.md, "Conv stages")
    "residual": 8,
    "pool": 9,
    # group norm and Online Normalization (docs/numerics.md, "Group norm", "Online
    # Normalization")
    "norm": 10,
    "normalized": 11,
    "norm_error": 12,
    "norm_group": 13,
    "norm_backward": 14,
    "norm_online": 15,
}
#: Step number of the random words used outside the pipeline (evaluation).
EVAL_STEP = 2**32 - 1
#: softmax unit: log2(e) with 16 fractional bits, and the 2^(j/256) table with 15.
LOG2E_Q16 = round(math.log2(math.e) * 2**16)
EXP2_TABLE = quantize(
    [2.0 ** (j / 256) * 2**15 for j in range(256)], FixedFormat(18, 0), Rounding.HALF_EVEN
).numpy()


def stream_id(stage: int, role: str) -> int:
    """The stochastic-rounding stream of ``role`` in ``stage`` (1-based; the loss unit's
    rounding is the ``loss`` role of the last stage, ``L``)."""
    return 16 * stage + ROLE_NUMBERS[role]
