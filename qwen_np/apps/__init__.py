"""The top layer: one module per command of the qwen-np CLI (apps/cli.py dispatches), the server, the
benchmark, the memory report, the quantizer and the default model's fetch. May import anything;
nothing imports it."""
