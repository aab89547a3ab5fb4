"""Chat prompts as token ids: ChatML, the way each Qwen generation builds it.

Qwen2 and Qwen3 write the conversation as text (their chat template) and encode it whole:

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{query}<|im_end|>\\n<|im_start|>assistant\\n

The original Qwen builds the same text but not its tokenization: qwen_generation_utils.py's
make_context encodes each piece on its own and joins the ids,

    [im_start] + enc("system") + enc("\\n") + enc(system) + [im_end]
    + enc("\\n") + [im_start] + enc("user") + enc("\\n") + enc(query) + [im_end]
    + enc("\\n") + [im_start] + enc("assistant") + enc("\\n")

with special-token strings inside the role and message encoded as ordinary text. Its default
system prompt is "You are a helpful assistant.". A chat that keeps its KV cache between turns
appends, after the answer's <|im_end|>, only the ids of the next user turn (next_turn_ids).
"""

from __future__ import annotations

from qwen_np.errors import FormatError
from qwen_np.runtime.tokenizer import Tokenizer, format_chatml


def chat_prompt_ids(tok: Tokenizer, model_type: str, query: str, system: str | None,
                    history=()) -> list[int]:
    """The prompt for `query` after earlier (query, answer) pairs in `history`, with the
    system prompt (for the original Qwen: make_context's ids; the system block is always
    there, empty if `system` is None or empty)."""
    if model_type != "qwen":
        messages = [m for q, a in history for m in ({"role": "user", "content": q},
                                                    {"role": "assistant", "content": a})]
        return tok.encode(format_chatml(messages + [{"role": "user", "content": query}], system))
    start, end = chat_token_ids(tok)
    nl = tok.encode("\n")
    ids = [start] + role_and_content(tok, "system", system or "") + [end]
    for q, a in history:
        ids += (nl + [start] + role_and_content(tok, "user", q) + [end]
                + nl + [start] + role_and_content(tok, "assistant", a) + [end])
    return ids + next_turn_ids(tok, model_type, query)


def messages_prompt_ids(tok: Tokenizer, model_type: str, messages: list[dict],
                        default_system: str | None) -> list[int]:
    """The prompt for the assistant's next turn after `messages` ([{"role": "system" | "user"
    | "assistant", "content": str}], as an OpenAI chat request sends them), with
    `default_system` as the system turn when the first message is not one. Each turn is
    written as chat_prompt_ids writes it, in the order given: for a system prompt and
    alternating user/assistant turns ending with a user turn, the same ids."""
    if model_type != "qwen":
        return tok.encode(format_chatml(messages, default_system))
    if not messages or messages[0]["role"] != "system":
        messages = [{"role": "system", "content": default_system or ""}] + list(messages)
    start, end = chat_token_ids(tok)
    nl = tok.encode("\n")
    ids = []
    for i, m in enumerate(messages):
        ids += ([] if i == 0 else nl) + [start] + role_and_content(tok, m["role"],
                                                                   m["content"]) + [end]
    return ids + nl + [start] + tok.encode("assistant") + nl


def next_turn_ids(tok: Tokenizer, model_type: str, query: str) -> list[int]:
    """The ids that follow an answer's <|im_end|>: a new user turn and the assistant's header
    (a chat that keeps its KV cache feeds only these)."""
    if model_type != "qwen":
        return tok.encode("\n" + format_chatml([{"role": "user", "content": query}], None))
    start, end = chat_token_ids(tok)
    nl = tok.encode("\n")
    return (nl + [start] + role_and_content(tok, "user", query) + [end]
            + nl + [start] + tok.encode("assistant") + nl)


def role_and_content(tok: Tokenizer, role: str, content: str) -> list[int]:
    """make_context's _tokenize_str: role, newline and content, each encoded on its own."""
    return tok.encode_plain(role) + tok.encode("\n") + tok.encode_plain(content)


def chat_token_ids(tok: Tokenizer) -> tuple[int, int]:
    start, end = tok.token_id("<|im_start|>"), tok.token_id("<|im_end|>")
    if start is None or end is None:
        raise FormatError(f"{tok.source}: no <|im_start|>/<|im_end|> tokens; chat needs ChatML")
    return start, end
