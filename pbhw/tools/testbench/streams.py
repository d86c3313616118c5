"""Drive and watch Amaranth ``stream`` ports from cocotb, with random idle cycles and back-pressure.

Amaranth flattens a port ``i`` of ``stream.Signature(shape)`` into the Verilog ports
``i__payload`` (the whole payload as one vector, see :mod:`sim.codes`), ``i__valid`` and
``i__ready``. Both helpers change their outputs just after the falling clock edge and sample in the
read-only phase of that time step, so a transfer is seen exactly when ``valid & ready`` holds at the
next rising edge, whether the design's ``ready`` is registered or follows ``valid`` combinationally.
Idle cycles and back-pressure come from their own seeded generators: a run is reproducible.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Iterable

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge

__all__ = ["start_clock_and_reset", "StreamDriver", "StreamMonitor"]


async def start_clock_and_reset(dut, *, period_ns: int = 10, cycles: int = 2) -> None:
    """Start ``dut.clk`` and hold Amaranth's synchronous ``dut.rst`` high for ``cycles`` cycles."""
    Clock(dut.clk, period_ns, unit="ns").start()
    dut.rst.value = 1
    await ClockCycles(dut.clk, cycles)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


def _check_probability(name: str, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), not {value!r}")
    return value


class StreamDriver:
    """Send payloads into a stream input port of the design.

    Parameters
    ----------
    dut : cocotb handle
        The top level.
    prefix : str
        The port's name in the Amaranth signature, e.g. ``"i"`` for ``i__payload``.
    clk : cocotb handle
        The clock of the port's domain.
    idle : float
        Probability of an idle cycle (``valid`` low) before each payload.
    seed : int
        Seed of the idle-cycle generator.
    """

    def __init__(self, dut, prefix: str, clk, *, idle: float = 0.0, seed: int = 0):
        self._payload = getattr(dut, f"{prefix}__payload")
        self._valid = getattr(dut, f"{prefix}__valid")
        self._ready = getattr(dut, f"{prefix}__ready")
        self._clk = clk
        self._idle = _check_probability("Idle", idle)
        self._rng = random.Random(seed)
        self._queue: collections.deque[int] = collections.deque()
        self._busy = False
        self.sent = 0
        self._valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def send(self, payloads: Iterable[int]) -> None:
        """Queue payloads (unsigned integers of the payload width) to be sent in order."""
        self._queue.extend(payloads)

    @property
    def done(self) -> bool:
        """Every queued payload has been accepted by the design."""
        return not self._queue and not self._busy

    async def wait_done(self) -> None:
        """Wait until every queued payload has been accepted."""
        while not self.done:
            await RisingEdge(self._clk)

    async def _run(self) -> None:
        while True:
            await FallingEdge(self._clk)
            if not self._busy:
                if self._queue and not (self._idle and self._rng.random() < self._idle):
                    self._payload.value = self._queue.popleft()
                    self._valid.value = 1
                    self._busy = True
                else:
                    self._valid.value = 0
            await ReadOnly()
            if self._busy and self._ready.value == 1:
                self._busy = False
                self.sent += 1


class StreamMonitor:
    """Receive payloads from a stream output port of the design.

    Parameters
    ----------
    dut : cocotb handle
        The top level.
    prefix : str
        The port's name in the Amaranth signature, e.g. ``"o"`` for ``o__payload``.
    clk : cocotb handle
        The clock of the port's domain.
    backpressure : float
        Probability that ``ready`` is low in a cycle.
    seed : int
        Seed of the back-pressure generator.
    """

    def __init__(self, dut, prefix: str, clk, *, backpressure: float = 0.0, seed: int = 0):
        self._payload = getattr(dut, f"{prefix}__payload")
        self._valid = getattr(dut, f"{prefix}__valid")
        self._ready = getattr(dut, f"{prefix}__ready")
        self._clk = clk
        self._backpressure = _check_probability("Back-pressure", backpressure)
        self._rng = random.Random(seed)
        self._items: collections.deque[int] = collections.deque()
        self.received = 0
        self._ready.value = 0
        self._task = cocotb.start_soon(self._run())

    async def receive(self, count: int, *, timeout_cycles: int | None = None) -> list[int]:
        """The next ``count`` payloads (unsigned integers), waiting for them as needed.

        Raises
        ------
        TimeoutError
            If they have not all arrived within ``timeout_cycles`` clock cycles.
        """
        waited = 0
        while len(self._items) < count:
            if timeout_cycles is not None and waited >= timeout_cycles:
                raise TimeoutError(
                    f"Received {len(self._items)} of {count} payloads in {waited} cycles"
                )
            await RisingEdge(self._clk)
            waited += 1
        return [self._items.popleft() for _ in range(count)]

    async def _run(self) -> None:
        while True:
            await FallingEdge(self._clk)
            ready = not (self._backpressure and self._rng.random() < self._backpressure)
            self._ready.value = int(ready)
            await ReadOnly()
            if ready and self._valid.value == 1:
                self._items.append(int(self._payload.value))
                self.received += 1
