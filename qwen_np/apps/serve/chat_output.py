"""A chat answer's text -> OpenAI's message parts: reasoning_content (a thinking template's
<think> block, runtime/reasoning.py), content, and tool_calls (Qwen's <tool_call> blocks,
runtime/tool_calls.py), whole or as streamed deltas.

    model text ---> ReasoningSplitter --reasoning--> {"reasoning_content": ...}
                                     \\--content----> ToolCallStream --content--> {"content"}
                                                                   \\--calls----> {"tool_calls"}

Each stage is optional: reasoning is split only for a template that thinks (it writes
<think>) with thinking on and reasoning_format "auto"; tool calls are parsed only when the
request has tools and tool_choice is not "none".
"""

from __future__ import annotations

from qwen_np.runtime.reasoning import ReasoningSplitter
from qwen_np.runtime.tool_calls import ToolCallStream


class ChatOutput:
    """One choice's text, turned into message parts as it streams."""

    def __init__(self, split_reasoning: bool, tool_names: list[str] | None, id_prefix: str):
        self.reasoning = ReasoningSplitter() if split_reasoning else None
        self.tools = ToolCallStream(tool_names, id_prefix) if tool_names is not None else None
        self.calls = 0

    def add(self, piece: str) -> list[tuple]:
        """Events: ("reasoning", text), ("content", text), ("tool_call", index, call)."""
        events = self.reasoning.add(piece) if self.reasoning else [("content", piece)]
        return self.route(events)

    def finish(self) -> list[tuple]:
        events = self.route(self.reasoning.finish()) if self.reasoning else []
        if self.tools:
            events += self.counted(self.tools.finish())
        return events

    def route(self, events: list[tuple]) -> list[tuple]:
        if self.tools is None:
            return events
        out = []
        for event in events:
            out += self.counted(self.tools.add(event[1])) if event[0] == "content" else [event]
        return out

    def counted(self, events: list[tuple]) -> list[tuple]:
        self.calls += sum(1 for e in events if e[0] == "tool_call")
        return events


def delta_of(event: tuple) -> dict:
    """A streamed chunk's delta for one event."""
    if event[0] == "tool_call":
        _, index, call = event
        return {"tool_calls": [{"index": index, **call}]}
    return {"reasoning_content" if event[0] == "reasoning" else "content": event[1]}


def message_of(events: list[tuple]) -> dict:
    """The whole answer's message from all its events."""
    reasoning = "".join(e[1] for e in events if e[0] == "reasoning")
    content = "".join(e[1] for e in events if e[0] == "content")
    calls = [e[2] for e in events if e[0] == "tool_call"]
    message = {"role": "assistant", "content": content or (None if calls else "")}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = calls
    return message
