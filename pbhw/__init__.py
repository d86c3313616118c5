"""pbhw: co-design FPGA hardware that trains neural networks with Pipelined Backpropagation."""

__version__ = "0.1.0"
