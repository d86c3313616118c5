"""Amaranth generators for the PB training pipeline."""
