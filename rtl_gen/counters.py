"""Saturation counters: per role, the overflow events of a stage, counted a few cycles late."""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from rtl_gen.pipeline import pipelined_sum, sum_levels

__all__ = ["COUNTER_BITS", "COUNTER_ROLES", "SaturationCounters"]

#: The saturation counters of a stage, in the order of its ``saturation`` port.
COUNTER_ROLES = ("activation", "error", "gradient", "velocity", "weight", "prediction")
#: Width of every saturation counter (it wraps after 2**32 - 1 events).
COUNTER_BITS = 32


class SaturationCounters(wiring.Component):
    """One :data:`COUNTER_BITS`-bit counter per role of :data:`COUNTER_ROLES`, each adding the
    events of its role in a cycle.

    Latency: an event of a role with ``n`` event bits is in its counter ``1 + sum_levels(n)``
    cycles after it is on its port (a pipelined sum of the bits, then the counter).

    Parameters
    ----------
    events : dict of str to int
        Event bits per cycle of each role (roles left out, or with 0, have no events).

    Attributes
    ----------
    <role> : In(events[role])
        One port per role with events: each bit set is one event this cycle.
    counts : Out(ArrayLayout(COUNTER_BITS, len(COUNTER_ROLES)))
        The counters, in the order of :data:`COUNTER_ROLES`; reset to 0.

    Raises
    ------
    ValueError
        If ``events`` names a role not in :data:`COUNTER_ROLES`, or a negative count.
    """

    def __init__(self, *, events: dict[str, int]):
        if not isinstance(events, dict):
            raise TypeError(f"Events must be a dict of role to count, not {events!r}")
        for role, count in events.items():
            if role not in COUNTER_ROLES:
                raise ValueError(f"Event role must be one of {COUNTER_ROLES}, not {role!r}")
            if not isinstance(count, int) or count < 0:
                raise ValueError(f"Events of {role} must be a non-negative integer, not {count!r}")
        self._events = {role: events.get(role, 0) for role in COUNTER_ROLES}
        members = {role: In(n) for role, n in self._events.items() if n}
        members["counts"] = Out(data.ArrayLayout(COUNTER_BITS, len(COUNTER_ROLES)))
        super().__init__(members)

    @property
    def events(self) -> dict[str, int]:
        return dict(self._events)

    def lag(self, role: str) -> int:
        """Cycles from an event of ``role`` on its port to its counter."""
        return 1 + sum_levels(self._events[role])

    def elaborate(self, platform):
        m = Module()
        for n, role in enumerate(COUNTER_ROLES):
            count = Signal(COUNTER_BITS, name=f"count_{role}")
            m.d.comb += self.counts[n].eq(count)
            flags = self._events[role]
            if flags:
                bits = getattr(self, role)
                terms = [bits[k] for k in range(flags)]
                levels = sum_levels(flags)
                events = pipelined_sum(
                    m, terms, range(flags + 1), levels, f"events_{role}", reset_less=False
                )
                m.d.sync += count.eq(count + events)
        return m
