"""Threefry-2x32 block function, first output word only: combinational or pipelined.

The random word of an element for stochastic rounding is ``x0`` of
``threefry2x32(k0=seed, k1=stream, c0=step, c1=index)`` (``docs/numerics_random.md``); this block
computes it with 32-bit additions, constant rotations and exclusive-ors, matching
:func:`pbhw.core.fixed.threefry2x32` bit for bit. Pipelined, it registers the state after every
:data:`ROUNDS_PER_STAGE` rounds (one 32-bit addition chain per round) and takes a new counter
every cycle.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from pbhw.core.fixed import THREEFRY_ROUNDS

__all__ = ["ROUNDS_PER_STAGE", "Threefry2x32", "pipelined_latency"]

_ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
_PARITY = 0x1BD11BDA
#: Rounds between pipeline registers of a pipelined block.
ROUNDS_PER_STAGE = 2


def pipelined_latency(rounds: int = THREEFRY_ROUNDS) -> int:
    """Cycles from the counter to ``x0`` of a pipelined block of ``rounds`` rounds."""
    return max(1, -(-rounds // ROUNDS_PER_STAGE))


class Threefry2x32(wiring.Component):
    """Threefry-2x32 of Random123: key ``(k0, k1)`` and counter ``(c0, c1)`` to the word ``x0``.

    Parameters
    ----------
    rounds : int
        Number of rounds, :data:`pbhw.core.fixed.THREEFRY_ROUNDS` by default.
    pipelined : bool
        Register the state after every :data:`ROUNDS_PER_STAGE` rounds: ``x0`` then follows
        ``c0, c1`` after :attr:`latency` cycles. The key words must then be held constant (the
        key injections read them directly).

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

    k0: In(32)
    k1: In(32)
    c0: In(32)
    c1: In(32)
    x0: Out(32)

    def __init__(self, *, rounds: int = THREEFRY_ROUNDS, pipelined: bool = False):
        if not isinstance(rounds, int) or isinstance(rounds, bool):
            raise TypeError(f"Rounds must be a non-negative integer, not {rounds!r}")
        if rounds < 0:
            raise ValueError(f"Rounds must be a non-negative integer, not {rounds!r}")
        if not isinstance(pipelined, bool):
            raise TypeError(f"Pipelined must be a bool, not {pipelined!r}")
        self._rounds = rounds
        self._pipelined = pipelined
        super().__init__()

    @property
    def pipelined(self) -> bool:
        return self._pipelined

    @property
    def latency(self) -> int:
        """Cycles from the counter to ``x0``: 0 combinational, else one per
        :data:`ROUNDS_PER_STAGE` rounds (at least one)."""
        return pipelined_latency(self._rounds) if self._pipelined else 0

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

        def register(value, name):
            signal = Signal(32, name=name, reset_less=True)
            m.d.sync += signal.eq(value)
            return signal

        for i in range(self._rounds):
            if self._pipelined and i and i % ROUNDS_PER_STAGE == 0:
                x0, x1 = register(x0, f"x0_stage{i}"), register(x1, f"x1_stage{i}")
            x0 = word(add(x0, x1), f"x0_round{i}")
            x1 = x1.rotate_left(_ROTATIONS[i % 8]) ^ x0
            if i % 4 == 3:  # key injection
                j = (i + 1) // 4
                x0 = word(add(x0, ks[j % 3]), f"x0_inject{j}")
                x1 = add(x1, ks[(j + 1) % 3], j)
            x1 = word(x1, f"x1_round{i}")
        if self._pipelined:
            m.d.sync += self.x0.eq(x0)
        else:
            m.d.comb += self.x0.eq(x0)
        return m
