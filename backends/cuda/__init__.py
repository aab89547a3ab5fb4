"""The CuPy backend: CUDA RawKernels (kernels.cu), their launch table, and the header that runs
them on the CPU for tests."""
