"""OpenAI's response shapes: the answer as one JSON object, or as server-sent events."""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request

from qwen_np.apps.serve.generation import (Ended, cancel_on_disconnect, cancel_unfinished,
                                           generated_text, raise_for_failure)
from qwen_np.apps.serve.metrics import RequestTiming
from qwen_np.apps.serve.openai_errors import ApiError, error_body
from qwen_np.apps.serve.stop_text import StopText
from qwen_np.runtime.batch import Batcher


def response_object(chat: bool, stream: bool) -> str:
    if chat:
        return "chat.completion.chunk" if stream else "chat.completion"
    return "text_completion"


def whole_choice(chat: bool, text: str, finish_reason: str) -> dict:
    if chat:
        return {"index": 0, "message": {"role": "assistant", "content": text},
                "logprobs": None, "finish_reason": finish_reason}
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}


def chunk_choice(chat: bool, text: str | None, finish_reason: str | None,
                 first: bool = False) -> dict:
    """One streamed choice: a piece of text, or (text None) the last, with its reason."""
    if chat:
        delta = {} if text is None else {"content": text}
        if first:
            delta = {"role": "assistant", **delta}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    """OpenAI's usage; cached_tokens: prompt tokens taken from a cached prefix."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def sse(data) -> bytes:
    """One server-sent event."""
    return b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode()) + b"\n\n"


async def whole_answer(http_request: Request, batcher: Batcher, request, queue: asyncio.Queue,
                       text: StopText, head: dict, chat: bool, prompt_tokens: int,
                       request_id: str, timing: RequestTiming) -> dict:
    """The answer as one response object, once the generation has ended. Meanwhile the client
    is polled: if it goes away, the generation is cancelled."""
    watch = asyncio.create_task(cancel_on_disconnect(http_request, batcher, request))
    pieces, ended = [], None
    try:
        async for item in generated_text(batcher, request, queue, text, timing):
            if isinstance(item, Ended):
                ended = item
            else:
                pieces.append(item)
    finally:
        watch.cancel()
        cancel_unfinished(batcher, request)
    raise_for_failure(ended, request_id)
    return {**head, "choices": [whole_choice(chat, "".join(pieces), ended.reason)],
            "usage": usage(prompt_tokens, ended.completion_tokens, request.cached_tokens)}


async def stream_events(batcher: Batcher, request, queue: asyncio.Queue, text: StopText,
                        head: dict, chat: bool, prompt_tokens: int, include_usage: bool,
                        request_id: str, timing: RequestTiming):
    """The streamed answer as server-sent events: chunks of text (a chat's first chunk also
    carries the role), a last chunk with the finish reason, optionally one with the usage and
    no choices, then [DONE]. A failure mid-stream is an event holding OpenAI's error object."""
    extra = {"usage": None} if include_usage else {}
    if chat:
        yield sse({**head, "choices": [chunk_choice(chat, "", None, first=True)], **extra})
    async for item in generated_text(batcher, request, queue, text, timing):
        if not isinstance(item, Ended):
            yield sse({**head, "choices": [chunk_choice(chat, item, None)], **extra})
            continue
        try:
            raise_for_failure(item, request_id)
        except ApiError as e:
            yield sse(error_body(e.status, e.message))
            break
        yield sse({**head, "choices": [chunk_choice(chat, None, item.reason)], **extra})
        if include_usage:
            yield sse({**head, "choices": [],
                       "usage": usage(prompt_tokens, item.completion_tokens,
                                      request.cached_tokens)})
    yield sse(b"[DONE]")
