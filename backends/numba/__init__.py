"""The Numba backend: CPU kernels (row tiles for the quantized products, attention, float
helpers)."""
