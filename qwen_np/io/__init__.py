"""Readers: files on disk -> (config, named tensors). Tensors stay memory-mapped."""
