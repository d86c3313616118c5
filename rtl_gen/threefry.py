"""Combinational Threefry-2x32 block function, first output word only.

The random word of an element for stochastic rounding is ``x0`` of
``threefry2x32(k0=seed, k1=stream, c0=step, c1=index)`` (``docs/numerics_random.md``); this block
computes it with 32-bit additions, constant rotations and exclusive-ors, matching
:func:`pbhw.fixed.threefry2x32` bit for bit.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from pbhw.fixed import THREEFRY_ROUNDS

__all__ = ["Threefry2x32"]

_ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
_PARITY = 0x1BD11BDA


class Threefry2x32(wiring.Component):
    """Threefry-2x32 of Random123: key ``(k0, k1)`` and counter ``(c0, c1)`` to the word ``x0``.

    Parameters
    ----------
    rounds : int
        Number of rounds, :data:`pbhw.fixed.THREEFRY_ROUNDS` by default.

    Attributes
    ----------
    k0, k1 : In(32)
        Key words.
    c0, c1 : In(32)
        Counter words.
    x0 : Out(32)
        First output word.

    Raises
    ------
    TypeError
        If ``rounds`` is not an integer.
    ValueError
        If ``rounds`` is negative.
    """

    #: Combinational: the output follows the inputs within the same cycle.
    latency = 0

    k0: In(32)
    k1: In(32)
    c0: In(32)
    c1: In(32)
    x0: Out(32)

    def __init__(self, *, rounds: int = THREEFRY_ROUNDS):
        if not isinstance(rounds, int) or isinstance(rounds, bool):
            raise TypeError(f"Rounds must be a non-negative integer, not {rounds!r}")
        if rounds < 0:
            raise ValueError(f"Rounds must be a non-negative integer, not {rounds!r}")
        self._rounds = rounds
        super().__init__()

    @property
    def rounds(self) -> int:
        return self._rounds

    def elaborate(self, platform):
        m = Module()

        def add(*terms):
            total = terms[0]
            for term in terms[1:]:
                total = total + term
            return total[:32]

        def word(value, name):
            # Each word feeds two expressions of the next round; without a signal per word the
            # expression tree would grow exponentially with the number of rounds.
            signal = Signal(32, name=name)
            m.d.comb += signal.eq(value)
            return signal

        ks = (self.k0, self.k1, self.k0 ^ self.k1 ^ _PARITY)
        x0 = word(add(self.c0, ks[0]), "x0_init")
        x1 = word(add(self.c1, ks[1]), "x1_init")
        for i in range(self._rounds):
            x0 = word(add(x0, x1), f"x0_round{i}")
            x1 = x1.rotate_left(_ROTATIONS[i % 8]) ^ x0
            if i % 4 == 3:  # key injection
                j = (i + 1) // 4
                x0 = word(add(x0, ks[j % 3]), f"x0_inject{j}")
                x1 = add(x1, ks[(j + 1) % 3], j)
            x1 = word(x1, f"x1_round{i}")
        m.d.comb += self.x0.eq(x0)
        return m
