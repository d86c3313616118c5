"""cocotb testbenches, run under Verilator (or Icarus) from pytest by :mod:`pbhw.tools.toolchain`.

Modules named ``tb_*`` hold ``@cocotb.test()`` functions and run inside the simulator; modules
named ``test_*`` are the pytest side that builds the design, computes the expected codes with the
golden model and starts the simulation. :mod:`pbhw.tools.testbench.streams` and :mod:`sim.codes`
are shared by all.
"""
