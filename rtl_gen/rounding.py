"""Rounding points of a stage: a requantizer and, when its role rounds stochastically, the
element's random word from a pipelined Threefry core.

The word of an element is ``x0`` of ``threefry2x32(k0=seed, k1=stream_id(stage, role), c0=step,
c1=index)`` (``docs/numerics_random.md``); the pipelined core gives it
:func:`rtl_gen.threefry.pipelined_latency` cycles after ``step`` and ``index`` (``step`` is
constant during a step).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Module, Value

from pbhw.core.config import RoleFormat
from pbhw.core.constants import stream_id
from pbhw.core.fixed import FixedFormat, Rounding
from rtl_gen.requantizer import Requantizer
from rtl_gen.threefry import Threefry2x32, pipelined_latency

__all__ = ["RandomKey", "random_word", "rounder"]


@dataclass(frozen=True)
class RandomKey:
    """The key of a stage's random words: the config's seed and the stage's index."""

    seed: int
    stage: int

    @property
    def latency(self) -> int:
        """Cycles from a word's counter (``step``, ``index``) to the word."""
        return pipelined_latency()


def random_word(m: Module, name: str, key: RandomKey, role: str, step, index) -> Value:
    """The 32-bit word of element ``index`` in stream ``role`` of ``key``'s stage,
    :attr:`RandomKey.latency` cycles after ``step`` and ``index`` (a pipelined Threefry core,
    submodule ``rng_<name>``)."""
    tf = Threefry2x32(pipelined=True)
    m.submodules[f"rng_{name}"] = tf
    m.d.comb += [
        tf.k0.eq(key.seed & 0xFFFFFFFF),
        tf.k1.eq(stream_id(key.stage, role)),
        tf.c0.eq(step),
        tf.c1.eq(index),
    ]
    return tf.x0


def rounder(
    m: Module,
    name: str,
    src: FixedFormat,
    role: RoleFormat,
    key: RandomKey,
    stream: str,
    step,
    index,
) -> Requantizer:
    """A requantizer from ``src`` into ``role`` (submodule ``rq_<name>``), combinational; a
    stochastic one rounds with the word of ``index`` in stream ``stream``, so ``step`` and
    ``index`` must be given :attr:`RandomKey.latency` cycles before the value."""
    rq = Requantizer(src=src, dst=role.format, rounding=role.rounding, overflow=role.overflow)
    m.submodules[f"rq_{name}"] = rq
    if role.rounding is Rounding.STOCHASTIC:
        m.d.comb += rq.random.eq(random_word(m, name, key, stream, step, index))
    return rq
