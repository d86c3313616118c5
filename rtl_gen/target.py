"""The device's hard multiplier as the generator builds products for it, resolved once.

A :class:`Multiplier` holds what the datapath needs to know of the device: the operand widths of
its hard multiplier (every product is cut into pieces that fit), the vendor primitive the
generator instantiates for each piece, if any, and whether a product by a constant takes hard
multipliers at all (``hardware.constants``: ``"fabric"`` builds it by shifts and adders). It is
made once per design from the device (:meth:`Multiplier.from_device`) and handed to every block
that multiplies; the blocks never see a vendor name.
"""

from __future__ import annotations

from pathlib import Path

from amaranth.hdl import Module, Signal, Value

from pbhw.core.config import ConstantProducts
from pbhw.core.datapath import constant_product_latency, product_pieces
from pbhw.core.devices import PRIMITIVES, Device
from rtl_gen.products import LATENCY, fabric_product, hard_product, pipelined_product
from rtl_gen.resources import MODELS

__all__ = ["GENERIC", "Multiplier"]

#: Per primitive: the builder of one registered piece, and the widest operand its ports take.
_BUILDERS = {"MULT18X18D": (hard_product, 18)}


def _is_port(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 1


class Multiplier:
    """The hard multiplier every product of a design is cut for.

    Parameters
    ----------
    ports : tuple of int
        Operand widths of the hard multiplier (the wider operand of a product takes the wider
        port); a product's operands wider than these are cut into pieces that fit. Default: a
        generic 18 x 18 multiplier.
    primitive : str or None
        The vendor primitive instantiated for every piece, with its own input and output
        registers (one of :data:`pbhw.core.devices.PRIMITIVES`), or ``None`` (the default) to
        leave the pieces to synthesis. The cycles and results are the same either way.
    constants : ConstantProducts
        How a product by an integer constant is built: ``DSP`` (the default), cut into pieces
        as any other product; ``FABRIC``, by shifts and adders over the constant's canonical
        signed digits (:func:`rtl_gen.products.fabric_product`), no hard multiplier, in
        :attr:`constant_latency` cycles (3, not 4). Same results.

    Raises
    ------
    TypeError
        If ``ports`` is not two integers greater than 1, ``primitive`` not a string, or
        ``constants`` not a ConstantProducts.
    ValueError
        If ``primitive`` is not a known primitive, or ``ports`` are wider than its ports.
    """

    __slots__ = ("_constants", "_ports", "_primitive")

    def __init__(
        self,
        *,
        ports: tuple[int, int] = (18, 18),
        primitive: str | None = None,
        constants: ConstantProducts = ConstantProducts.DSP,
    ):
        if not (isinstance(ports, tuple) and len(ports) == 2 and all(map(_is_port, ports))):
            raise TypeError(f"Ports must be a tuple of two integers greater than 1, not {ports!r}")
        if primitive is not None and not isinstance(primitive, str):
            raise TypeError(f"Primitive must be a string or None, not {primitive!r}")
        if not isinstance(constants, ConstantProducts):
            raise TypeError(f"Constants must be a ConstantProducts, not {constants!r}")
        if primitive is not None and primitive not in _BUILDERS:
            raise ValueError(f"Primitive must be one of {PRIMITIVES} or None, not {primitive!r}")
        if primitive is not None and max(ports) > _BUILDERS[primitive][1]:
            raise ValueError(
                f"Ports must be at most {_BUILDERS[primitive][1]} bits wide for {primitive}, "
                f"not {ports!r}"
            )
        self._ports = ports
        self._primitive = primitive
        self._constants = constants

    @classmethod
    def from_device(
        cls,
        device: Device,
        *,
        primitives: bool = True,
        constants: ConstantProducts = ConstantProducts.DSP,
    ) -> Multiplier:
        """The multiplier of ``device``: its ports, and its ``[multiplier] primitive`` unless
        ``primitives`` is false (``amaranth.sim`` cannot simulate a vendor primitive; products
        left to synthesis take the same cycles and give the same results); ``constants`` as
        in the constructor."""
        if not isinstance(device, Device):
            raise TypeError(f"Device must be a Device, not {device!r}")
        primitive = device.multiplier_primitive if primitives else None
        return cls(ports=tuple(device.multiplier_widths), primitive=primitive, constants=constants)

    @property
    def ports(self) -> tuple[int, int]:
        return self._ports

    @property
    def primitive(self) -> str | None:
        return self._primitive

    @property
    def constants(self) -> ConstantProducts:
        return self._constants

    @property
    def latency(self) -> int:
        """Cycles from the operands to a product (:data:`rtl_gen.products.LATENCY`)."""
        return LATENCY

    @property
    def constant_latency(self) -> int:
        """Cycles from the operand to a product by a constant
        (:func:`pbhw.core.datapath.constant_product_latency` of :attr:`constants`)."""
        return constant_product_latency(self._constants)

    @property
    def models(self) -> tuple[Path, ...]:
        """Simulation models the products need (:data:`rtl_gen.resources.MODELS`): the
        primitive's, or none."""
        return () if self._primitive is None else (MODELS / f"{self._primitive}.v",)

    def pieces(self, a_bits: int, b: tuple[str, int]) -> list[tuple[int, int]]:
        """Operand widths of the hard-multiplier pieces :meth:`product` builds for a signed
        ``a_bits``-bit operand times ``b`` (``("width", n)`` or ``("constant", code)``, as
        :func:`pbhw.core.datapath.product_pieces` takes it): none for a constant in the
        fabric."""
        if b[0] == "constant" and self._constants is ConstantProducts.FABRIC:
            return []
        return product_pieces(a_bits, b, self._ports)

    def product(self, m: Module, a, b, name: str, *, keep=None, split=None, latency=None):
        """``a * b`` (``b`` a value or an integer constant), exact, :attr:`latency` cycles
        later, or :attr:`constant_latency` for a constant; with ``keep`` (one bit, a cycle
        before the product), 0 where ``keep`` is 0 (:func:`rtl_gen.products.pipelined_product`,
        or for a constant with :attr:`constants` ``FABRIC``,
        :func:`rtl_gen.products.fabric_product`); with ``split`` (a product of two values only),
        the pair of products where ``split`` is 0 and 1. ``latency`` asks a fabric constant's
        product for more cycles (up to :attr:`latency`, so that a schedule need not know how
        its constant is built)."""
        fabric = self._constants is ConstantProducts.FABRIC
        if latency is not None and not self.constant_latency <= latency <= LATENCY:
            raise ValueError(
                f"Latency must be in {self.constant_latency}..{LATENCY}, not {latency!r}"
            )
        if fabric and isinstance(b, int) and not isinstance(b, bool):
            if split is not None:
                raise ValueError("Only a product of two values can be split")
            cycles = self.constant_latency if latency is None else latency
            return fabric_product(m, a, b, name, keep=keep, latency=cycles)
        if latency not in (None, LATENCY):
            raise ValueError(f"A product of hard-multiplier pieces takes {LATENCY} cycles")
        hard = None if self._primitive is None else _BUILDERS[self._primitive][0]
        return pipelined_product(m, a, b, self._ports, name, hard=hard, keep=keep, split=split)

    def piece(self, m: Module, a: Value, b: Value, name: str) -> Signal:
        """``a * b`` (signed operands that fit the ports) by one instance of the primitive with
        its input and output registers: the product two cycles later."""
        if self._primitive is None:
            raise ValueError("Multiplier must have a primitive to build a piece, not None")
        return _BUILDERS[self._primitive][0](m, a, b, name)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Multiplier):
            return NotImplemented
        return self._key() == other._key()

    def _key(self):
        return (self._ports, self._primitive, self._constants)

    def __hash__(self) -> int:
        return hash((Multiplier, *self._key()))

    def __repr__(self) -> str:
        extra = ""
        if self._constants is not ConstantProducts.DSP:
            extra = f", constants={self._constants}"
        return f"Multiplier(ports={self._ports!r}, primitive={self._primitive!r}{extra})"


#: A generic 18 x 18 multiplier left to synthesis: the default of every block that multiplies.
GENERIC = Multiplier()
