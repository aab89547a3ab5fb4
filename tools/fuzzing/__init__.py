"""The modules of tools/fuzz.py, the mutation fuzzer over model files (its docstring
says what it does): seeds, mutations, one input, the forked child, classification, the run."""
