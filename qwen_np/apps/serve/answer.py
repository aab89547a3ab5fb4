"""OpenAI's response shapes: the answer as one JSON object, or as server-sent events; its n
choices, and their log-probabilities (logprobs.py) when asked for."""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request

from qwen_np.apps.serve.chat_output import delta_of, message_of
from qwen_np.apps.serve.generation import (Choice, Ended, cancel_all, cancel_on_disconnect,
                                           choice_events, raise_for_failure)
from qwen_np.apps.serve.job import Job
from qwen_np.apps.serve.logprobs import chat_content, completion_logprobs, joined
from qwen_np.apps.serve.metrics import RequestTiming
from qwen_np.apps.serve.openai_errors import ApiError, error_body
from qwen_np.runtime.batch import Batcher


def response_object(chat: bool, stream: bool) -> str:
    if chat:
        return "chat.completion.chunk" if stream else "chat.completion"
    return "text_completion"


def whole_choice(chat: bool, choice: Choice, text: str, logprobs) -> dict:
    """One choice of a whole answer: a chat's message (its reasoning and tool calls apart,
    chat_output.py), or completions' text."""
    if chat:
        message = message_of(choice.output.add(text) + choice.output.finish())
        return {"index": choice.index, "message": message, "logprobs": logprobs,
                "finish_reason": finish_reason(choice)}
    return {"index": choice.index, "text": text, "logprobs": logprobs,
            "finish_reason": choice.ended.reason}


def finish_reason(choice: Choice) -> str:
    """"tool_calls" for a chat choice that ended calling tools, else how it ended."""
    return "tool_calls" if choice.output is not None and choice.output.calls and \
        choice.ended.reason == "stop" else choice.ended.reason


def chunk_choice(chat: bool, index: int, text, finish_reason: str | None,
                 first: bool = False, logprobs=None) -> dict:
    """One streamed choice: a piece of text (for chat, a delta: {"content" | "reasoning_content"
    | "tool_calls": ...}), or (None) the last, with its reason."""
    if chat:
        delta = {} if text is None else text if isinstance(text, dict) else {"content": text}
        if first:
            delta = {"role": "assistant", **delta}
        return {"index": index, "delta": delta, "logprobs": logprobs,
                "finish_reason": finish_reason}
    return {"index": index, "text": text or "", "logprobs": logprobs,
            "finish_reason": finish_reason}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    """OpenAI's usage; cached_tokens: prompt tokens taken from a cached prefix."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def sse(data) -> bytes:
    """One server-sent event."""
    return b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode()) + b"\n\n"


def echoed_prompt(job: Job, choice: Choice, tokenizer) -> tuple[str, dict | None]:
    """Completions' echo: the prompt's text and, with logprobs, its tokens' (the first has
    none: nothing predicts it). The offsets of the generated tokens follow its text."""
    text = tokenizer.decode(job.ids)
    if choice.request.logprobs is None:
        return text, None
    entries = [(None, [])] + choice.request.prompt_token_logprobs
    return text, completion_logprobs(tokenizer, job.ids, entries)


def new_logprobs(choice: Choice, tokenizer, chat: bool, offset: int = 0):
    """The log-probabilities of the choice's tokens taken into its text and not given out
    yet (None when none were asked for, or none are new)."""
    request = choice.request
    start, end = choice.logprobs_sent, len(choice.text.ids)
    if request.logprobs is None or end == start:
        return None
    ids, entries = choice.text.ids[start:end], request.token_logprobs[start:end]
    choice.logprobs_sent = end
    if chat:
        return {"content": chat_content(tokenizer, ids, entries), "refusal": None}
    part = completion_logprobs(tokenizer, ids, entries, offset + choice.offset)
    choice.offset += sum(len(t) for t in part["tokens"])
    return part


async def whole_answer(http_request: Request, batcher: Batcher, choices: list[Choice],
                       queue: asyncio.Queue, job: Job, head: dict, chat: bool, tokenizer,
                       request_id: str, timing: RequestTiming) -> dict:
    """The answer as one response object, once every choice has ended. Meanwhile the client
    is polled: if it goes away, the generation is cancelled."""
    watch = asyncio.create_task(cancel_on_disconnect(http_request, batcher, choices))
    pieces = {c.index: [] for c in choices}
    try:
        async for choice, item in choice_events(batcher, choices, queue, timing):
            if not isinstance(item, Ended):
                pieces[choice.index].append(item)
    finally:
        watch.cancel()
        cancel_all(batcher, choices)
    for choice in choices:
        raise_for_failure(choice.ended, request_id)
    out = []
    for choice in choices:
        prefix, prompt_logprobs = echoed_prompt(job, choice, tokenizer) if job.echo else ("",
                                                                                          None)
        logprobs = new_logprobs(choice, tokenizer, chat, offset=len(prefix))
        if chat and logprobs is None and choice.request.logprobs is not None:
            logprobs = {"content": [], "refusal": None}
        if not chat and choice.request.logprobs is not None:
            logprobs = joined([p for p in (prompt_logprobs, logprobs) if p is not None])
        out.append(whole_choice(chat, choice, prefix + "".join(pieces[choice.index]),
                                logprobs))
    return {**head, "choices": out,
            "usage": usage(len(job.ids), sum(c.ended.completion_tokens for c in choices),
                           choices[0].request.cached_tokens)}


async def stream_events(batcher: Batcher, choices: list[Choice], queue: asyncio.Queue,
                        job: Job, head: dict, chat: bool, tokenizer, request_id: str,
                        timing: RequestTiming):
    """The streamed answer as server-sent events: per choice, a chat's first chunk with the
    role (or, at its first token, completions' echoed prompt), chunks of text (with their tokens' logprobs when
    asked for), a last chunk with the finish reason; then, with include_usage, one chunk
    with the usage and no choices; then [DONE]. A failure mid-stream is an event holding
    OpenAI's error object, then [DONE]."""
    extra = {"usage": None} if job.include_usage else {}

    def chunk(choice, text, reason=None, first=False, logprobs=None):
        return sse({**head, "choices": [chunk_choice(chat, choice.index, text, reason, first,
                                                     logprobs)], **extra})
    for choice in choices:
        if chat:
            yield chunk(choice, "", first=True)
    echo_pending = {c.index for c in choices} if job.echo else set()
    async for choice, item in choice_events(batcher, choices, queue, timing):
        if choice.index in echo_pending and not (isinstance(item, Ended) and
                                                 item.reason in ("error", "cancelled")):
            echo_pending.discard(choice.index)        # its prompt is in: its logprobs too
            text, prompt_logprobs = echoed_prompt(job, choice, tokenizer)
            choice.offset = len(text)
            yield chunk(choice, text, logprobs=prompt_logprobs)
        if not isinstance(item, Ended):
            if not chat:
                yield chunk(choice, item, logprobs=new_logprobs(choice, tokenizer, chat))
            for event in choice.output.add(item) if chat else ():
                yield chunk(choice, delta_of(event), logprobs=new_logprobs(choice, tokenizer,
                                                                           chat))
            continue
        try:
            raise_for_failure(item, request_id)
        except ApiError as e:
            yield sse(error_body(e.status, e.message))
            break
        for event in choice.output.finish() if chat else ():
            yield chunk(choice, delta_of(event), logprobs=new_logprobs(choice, tokenizer, chat))
        yield chunk(choice, None, finish_reason(choice),
                    logprobs=new_logprobs(choice, tokenizer, chat))
    else:
        if job.include_usage:
            yield sse({**head, "choices": [], "usage": usage(
                len(job.ids), sum(c.ended.completion_tokens for c in choices),
                choices[0].request.cached_tokens)})
    yield sse(b"[DONE]")
