"""Qwen2.5/Qwen3 tool calls, read out of the generated text into OpenAI `tool_calls`: whole
(parse_tool_calls) or as it streams (ToolCallStream).

The chat template asks for one block per call, after any text (Hermes 2 Pro format):

    Let me look that up.\\n                                       <- content (text before block 1)
    <tool_call>\\n
    {"name": "get_weather", "arguments": {"city": "Paris"}}\\n    <- a call, as JSON
    </tool_call>\\n                                               <- text between/after: dropped
    <tool_call>\\n
    {"name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}}\\n
    </tool_call>

Each block becomes {"id": id_prefix + index, "type": "function", "function": {"name": ...,
"arguments": json.dumps(arguments, ensure_ascii=False)}}.

The rules are vLLM's Hermes2ProToolParser.extract_tool_calls (vllm/tool_parsers/
hermes_tool_parser.py, commit 02bb669bf661df8b946121215ecb213468247b22):
- a block is what lies between <tool_call> and the next </tool_call> (a non-greedy match),
  so a "</tool_call>" inside a JSON string ends the block early and spoils its JSON;
- a last block with no </tool_call> is still read: a call if its JSON is whole;
- content is the text before the first <tool_call>, kept as is (a whitespace-only "\\n\\n"
  stays), None only when empty; text between and after blocks is dropped;
- all or nothing: if any block's JSON does not parse, is not an object, lacks a string
  "name" or lacks "arguments", there are no calls and the whole output is content.
Where we differ: "arguments" given as a JSON string is kept as that string (vLLM would
json.dumps it again), and with `tool_names` a call to a tool not offered spoils the output
like a malformed block (vLLM does not check names).
"""

from __future__ import annotations

import json
import re

from qwen_np.runtime.reasoning import tag_prefix_length

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)


def parse_tool_calls(text: str, tool_names=None,
                     id_prefix: str = "call_") -> tuple[str | None, list[dict]]:
    """(content, calls) of a whole output; calls is empty when the text holds none, or when
    any block is malformed (then content is the whole text)."""
    start = text.find(TOOL_CALL_OPEN)
    if start < 0:
        return text or None, []
    calls = [tool_call_from_json(closed if closed else unclosed, tool_names)
             for closed, unclosed in TOOL_CALL_BLOCK.findall(text, start)]
    if any(call is None for call in calls):
        return text, []
    for index, call in enumerate(calls):
        call["id"] = f"{id_prefix}{index}"
    return text[:start] or None, calls


def tool_call_from_json(body: str, tool_names=None) -> dict | None:
    """The OpenAI tool call a block's JSON body asks for (no id yet), or None if malformed."""
    try:
        called = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not (isinstance(called, dict) and isinstance(called.get("name"), str)
            and "arguments" in called):
        return None
    if tool_names is not None and called["name"] not in tool_names:
        return None
    arguments = called["arguments"]
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {"id": None, "type": "function",
            "function": {"name": called["name"], "arguments": arguments}}


class ToolCallStream:
    """parse_tool_calls on streamed pieces. Events:
        ("content", text)             text before the first <tool_call>, sent at once but for
                                      a tail that could begin "<tool_call>";
        ("tool_call", index, call)    one whole call, at finish().
    Calls wait for finish() because of vLLM's all-or-nothing rule: a malformed block later
    on turns every earlier call back into text, so none is certain before the output ends
    (Qwen ends it right after the last </tool_call>, so the wait is short). If the blocks do
    not parse, finish() sends their raw text, from the first <tool_call> on, as content.
    The events, joined, give what parse_tool_calls gives for the joined pieces."""

    def __init__(self, tool_names=None, id_prefix: str = "call_"):
        self.tool_names, self.id_prefix = tool_names, id_prefix
        self.pending = ""                # text before any <tool_call>, held back
        self.blocks: list[str] = []      # text from the first <tool_call> on, once seen

    def add(self, piece: str) -> list[tuple]:
        if self.blocks:
            self.blocks.append(piece)
            return []
        self.pending += piece
        start = self.pending.find(TOOL_CALL_OPEN)
        if start >= 0:
            content, self.blocks, self.pending = self.pending[:start], [self.pending[start:]], ""
        else:
            end = len(self.pending) - tag_prefix_length(self.pending, TOOL_CALL_OPEN)
            content, self.pending = self.pending[:end], self.pending[end:]
        return [("content", content)] if content else []

    def finish(self) -> list[tuple]:
        rest = self.pending + "".join(self.blocks)
        self.pending, self.blocks = "", []
        content, calls = parse_tool_calls(rest, self.tool_names, self.id_prefix)
        events = [("content", content)] if content else []
        return events + [("tool_call", index, call) for index, call in enumerate(calls)]
