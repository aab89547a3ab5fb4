"""A forward pass's trace as a scoped recorder: each intermediate is handed to record(name, x)
under its Hugging Face module name (qwen_np/oracle/trace.py lists the names).

    trace = Trace(record)
    layer = trace.scope("model").scope("layers.3")
    layer.scope("self_attn")("q_proj", q)       record("model.layers.3.self_attn.q_proj", q)

A pass that is not traced gets NO_TRACE, which records nothing and is its own every scope.
"""

from __future__ import annotations


class Trace:
    __slots__ = ("record", "prefix")

    def __init__(self, record, prefix: str = ""):
        self.record = record          # record(name, x)
        self.prefix = prefix          # "" or a module's name and a dot: "model.layers.3."

    def scope(self, name: str) -> Trace:
        """The recorder of the module `name` inside this one."""
        return Trace(self.record, self.prefix + name + ".")

    def __call__(self, name: str, x) -> None:
        self.record(self.prefix + name, x)


def no_trace(name: str, x) -> None:
    """The recorder of a pass that is not traced: it records nothing, and is its own every
    scope. (A plain function, not a class: a decode step calls it some 15 times a layer, and a
    function call costs half what an instance's __call__ does.)"""


no_trace.scope = lambda name: no_trace
NO_TRACE = no_trace
