"""The reference a design's Fmax is measured against: a lone registered multiply-accumulate.

A registered MAC (registered inputs ``a``, ``b``; ``acc <= acc + a*b``; registered output) is the
fastest thing a DSP datapath can clock at. Built on the device's hard-multiplier primitive with
its input and output registers, as the generator instantiates it, its routed Fmax times the
device's DSP blocks gives the DSP-bound limit of :func:`pbhw.core.figures.figures_of_merit`.
:func:`route_mac` places and routes it with :func:`pbhw.tools.estimate.synthesize` (cached like
any design); it is small and routes in well under a minute.
"""

from __future__ import annotations

from typing import Any

from amaranth.back import verilog
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from pbhw.core.config import Config
from pbhw.core.devices import Device, config_device
from pbhw.core.errors import ToolError
from pbhw.tools.estimate import Estimate, Progress, config_placer, synthesize
from rtl_gen.target import Multiplier

__all__ = ["MAC_WIDTHS", "RegisteredMac", "mac_verilog", "reference_mac", "route_mac"]

#: Operand and accumulator widths of the reference MAC: 16 x 16 + a 40-bit accumulator.
MAC_WIDTHS = (16, 16, 40)


class RegisteredMac(wiring.Component):
    """``acc <= acc + a*b`` with registered inputs and a registered output.

    With ``primitive`` (a device's ``[multiplier] primitive``), the product is that hard
    multiplier with its input and output registers, as the generator instantiates it: then
    ``acc <= acc + p`` with ``p`` the product registered in the multiplier (one cycle more)."""

    def __init__(self, width_a: int, width_b: int, width_acc: int, primitive=None) -> None:
        self._widths = (width_a, width_b, width_acc)
        self._primitive = primitive
        super().__init__(
            {"a": In(signed(width_a)), "b": In(signed(width_b)), "acc": Out(signed(width_acc))}
        )

    def elaborate(self, platform):
        m = Module()
        acc = Signal(signed(self._widths[2]))
        if self._primitive is None:
            a = Signal.like(self.a)
            b = Signal.like(self.b)
            m.d.sync += [a.eq(self.a), b.eq(self.b), acc.eq(acc + a * b)]
        else:
            product = Multiplier(primitive=self._primitive).piece(m, self.a, self.b, "product")
            m.d.sync += acc.eq(acc + product)
        m.d.sync += self.acc.eq(acc)
        return m


def mac_verilog(width_a: int, width_b: int, width_acc: int, primitive=None) -> tuple[str, str]:
    """Verilog and top-module name of a :class:`RegisteredMac`."""
    top = f"mac_{width_a}x{width_b}_{width_acc}" + (f"_{primitive}" if primitive else "")
    mac = RegisteredMac(width_a, width_b, width_acc, primitive)
    return verilog.convert(mac, name=top), top


def route_mac(
    device: Device,
    *,
    widths: tuple[int, int, int] = MAC_WIDTHS,
    primitive: bool = True,
    clock_mhz: float | None = None,
    seed: int | None = None,
    placer: str | None = None,
    progress: Progress | None = None,
) -> Estimate:
    """Place and route the reference MAC on ``device``.

    Parameters
    ----------
    device
        The device (:func:`pbhw.core.devices.load_device`).
    widths
        Operand and accumulator widths (default :data:`MAC_WIDTHS`).
    primitive
        Build the product on the device's hard-multiplier primitive (if its file names one),
        as the generator does; False: a plain ``*`` mapped by Yosys.
    clock_mhz, seed, placer, progress
        As for :func:`pbhw.tools.estimate.synthesize`.

    Returns
    -------
    Estimate
        Its ``fmax_mhz`` is the MAC's Fmax (None if routing stopped).
    """
    text, top = mac_verilog(*widths, device.multiplier_primitive if primitive else None)
    return synthesize(
        text, top, device, clock_mhz=clock_mhz, seed=seed, placer=placer, progress=progress
    )


def reference_mac(
    config: Config, *, seed: int | None = None, progress: Progress | None = None
) -> dict[str, Any] | None:
    """The reference MAC on the config's device, as the flow's summary holds it
    (``summary["reference_mac"]``, read by :func:`pbhw.flows.report.render_flow_report`).

    Parameters
    ----------
    config
        The config; its ``hardware.device``, ``hardware.clock_mhz`` (the target) and
        ``hardware.placer`` are used.
    seed
        The nextpnr placement seed the design was routed with (None: nextpnr's own).
    progress
        Called with a message before each tool runs, and if the tools fail.

    Returns
    -------
    dict or None
        The MAC's estimate as JSON (``fmax_mhz`` is its Fmax), or None if the tools failed:
        the report then shows the DSP-bound limit and the efficiency as n/a, and the flow goes
        on.
    """
    try:
        mac = route_mac(
            config_device(config),
            clock_mhz=config.hardware.clock_mhz,
            seed=seed,
            placer=config_placer(config),
            progress=progress,
        )
    except ToolError as e:
        if progress is not None:
            progress(f"reference MAC not routed: {str(e).splitlines()[0]}")
        return None
    return mac.to_json()
