"""Step-synchronous Pipelined Backpropagation model (float and bit-exact integer arithmetic)."""
