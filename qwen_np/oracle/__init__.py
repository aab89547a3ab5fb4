"""The oracle layer: single reference ops (ref), per-layer traces and their comparison (trace),
perplexity. What an engineer checking another implementation uses. Imports the runtime and
below; never the apps."""
