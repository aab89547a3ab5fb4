"""Qwen3's thinking, split from its answer: whole (split_reasoning) or as it streams
(ReasoningSplitter).

With thinking on, Qwen3's template ends the prompt in "<|im_start|>assistant\\n" and the model
writes (Qwen3-2507 Thinking and Qwen3.5 templates put the "<think>\\n" in the prompt instead,
so the output starts at the reasoning):

    <think>\\n  I should check ... \\n</think>\\n\\n  The answer is 42.
    |-dropped-||------ reasoning -----| sep  |------ content ------|

With thinking off the template has already written "<think>\\n\\n</think>\\n\\n" into the
prompt and the output is all answer.

The rules are vLLM's Qwen3ReasoningParser.extract_reasoning (vllm/reasoning/
qwen3_reasoning_parser.py, commit 00a4c6a1d828f0de294a8eac028c60a2b522efa2, after PR #35230):
- nothing is stripped but the tags: the reasoning keeps its "\\n" at both ends and the content
  keeps the "\\n\\n" after </think>, as vLLM returns them;
- the reasoning ends at the first </think>; a later </think> belongs to the content;
- no </think> at all: with thinking on the output was cut short mid-thought and all of it is
  reasoning (PR #35230; before it vLLM called it content); with thinking off all is content.
Where we differ: vLLM drops the first "<think>" wherever it is, with any text before it; we
drop it only at the very start, since text before it has already streamed as reasoning.
vLLM's "<tool_call><function=" implicit end of reasoning (Qwen3.5's XML tool calls) is left
out: Qwen2.5/Qwen3 write JSON tool calls after </think>. llama-server's
--reasoning-format deepseek splits at the same tags but also strips whitespace; we do not.
"""

from __future__ import annotations

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def split_reasoning(text: str, thinking: bool = True) -> tuple[str | None, str]:
    """(reasoning, content) of a whole output; reasoning is None when thinking is off."""
    if not thinking:
        return None, text
    if text.startswith(THINK_OPEN):
        text = text[len(THINK_OPEN):]
    reasoning, _, content = text.partition(THINK_CLOSE)
    return reasoning, content


class ReasoningSplitter:
    """split_reasoning on streamed pieces: add() returns ("reasoning" | "content", text)
    deltas as soon as they are certain; only a tail that could begin the tag still awaited
    ("<think>" at the very start, "</think>" inside the reasoning) is held back. The deltas
    of each kind, joined, equal split_reasoning of the joined pieces, however it was cut."""

    def __init__(self, thinking: bool = True):
        self.state = "start" if thinking else "content"   # start -> reasoning -> content
        self.pending = ""                                  # text held back, not yet sent

    def add(self, piece: str) -> list[tuple[str, str]]:
        self.pending += piece
        deltas: list[tuple[str, str]] = []
        if self.state == "start":
            if self.pending.startswith(THINK_OPEN):
                self.pending = self.pending[len(THINK_OPEN):]
            elif THINK_OPEN.startswith(self.pending):
                return deltas                              # may still become "<think>"
            self.state = "reasoning"
        if self.state == "reasoning":
            reasoning, found, content = self.pending.partition(THINK_CLOSE)
            if found:
                deltas.append(("reasoning", reasoning))
                self.pending, self.state = content, "content"
            else:
                keep = tag_prefix_length(self.pending, THINK_CLOSE)
                deltas.append(("reasoning", self.pending[:len(self.pending) - keep]))
                self.pending = self.pending[len(self.pending) - keep:]
        if self.state == "content":
            deltas.append(("content", self.pending))
            self.pending = ""
        return [(kind, text) for kind, text in deltas if text]

    def finish(self) -> list[tuple[str, str]]:
        """The held-back tail, once no piece will follow: it can no longer become a tag, so
        it is reasoning (a cut-short thought, or a start that never became "<think>")."""
        rest, self.pending = self.pending, ""
        kind = "content" if self.state == "content" else "reasoning"
        return [(kind, rest)] if rest else []


def tag_prefix_length(text: str, tag: str) -> int:
    """The length of the longest tail of `text` that begins `tag` (and is not all of it):
    what a stream must hold back until the next piece says whether the tag follows."""
    return next((k for k in range(min(len(tag) - 1, len(text)), 0, -1)
                 if text.endswith(tag[:k])), 0)
