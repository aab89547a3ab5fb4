"""From the batcher's thread to the text of the answer: a Job submitted to the batcher, its
tokens handed to the request's asyncio.Queue, and the text pieces as StopText releases them.

A request whose client goes away is cancelled in the batcher: a stream when Starlette closes
its body generator (the generator's `finally`), a plain request when polling
`is_disconnected()` sees it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from starlette.requests import Request

from qwen_np.apps.serve.job import Job
from qwen_np.apps.serve.metrics import RequestTiming
from qwen_np.apps.serve.openai_errors import ApiError
from qwen_np.apps.serve.request_log import SERVER_LOGGER
from qwen_np.apps.serve.stop_text import StopText
from qwen_np.errors import InputError
from qwen_np.runtime.batch import Batcher, Closed, QueueFull

RETRY_AFTER_SECONDS = 1            # told to a client refused with 503
DISCONNECT_POLL_SECONDS = 0.5      # how often a plain (not streamed) request checks its client


def start_generation(batcher: Batcher, job: Job, prompt_param: str):
    """Submit the job; (the batcher's Request, the asyncio.Queue its items arrive on:
    (token, None) per token, then (None, reason)). Raises 400 / 503 as the batcher refuses
    (400 naming `prompt_param`, the field the prompt came from)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def emit(token, finish):     # in the batcher's thread: must not raise, must not block
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (token, finish))
        except RuntimeError:     # the event loop has closed: nobody is waiting any more
            pass

    try:
        request = batcher.submit(job.ids, job.max_tokens, job.sampling, job.stop_ids, emit,
                                 cache_prompt=job.cache_prompt)
    except (QueueFull, Closed) as e:
        raise ApiError(503, str(e), code="server_busy" if isinstance(e, QueueFull) else
                       "server_stopping", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) \
            from None
    except InputError as e:      # the prompt does not fit the context
        raise ApiError(400, str(e), param=prompt_param, code="context_length_exceeded") from None
    return request, queue


@dataclass(frozen=True)
class Ended:
    """How a generation ended: "stop", "length", "cancelled" or "error"."""
    reason: str
    completion_tokens: int
    error: str | None = None


async def generated_text(batcher: Batcher, request, queue: asyncio.Queue, text: StopText,
                         timing: RequestTiming):
    """The answer's text in pieces as they become final, then one Ended. Whatever way this
    generator ends (done, closed, cancelled), the request does not outlive it."""
    try:
        while True:
            token, finish = await queue.get()
            if finish is None:
                timing.token()
                piece = text.add(token)
            else:
                piece = text.finish() if finish in ("stop", "length") else ""
            if piece:
                yield piece
            if text.stopped:           # a stop string: the rest of the generation is not wanted
                batcher.cancel(request)
                yield Ended("stop", len(text.ids))
                return
            if finish is not None:
                yield Ended(finish, len(request.generated), request.error)
                return
    finally:
        cancel_unfinished(batcher, request)


def cancel_unfinished(batcher: Batcher, request) -> None:
    if request.finish is None:
        batcher.cancel(request)


async def cancel_on_disconnect(http_request: Request, batcher: Batcher, request) -> None:
    """Poll whether the client of a plain request is still there; cancel it if not."""
    while request.finish is None:
        if await http_request.is_disconnected():
            batcher.cancel(request)
            return
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)


def raise_for_failure(ended: Ended, request_id: str) -> None:
    """ApiError for a generation that failed (500: its cause goes to the log, under the
    request's id, not to the client) or was cancelled by the server (503)."""
    if ended.reason == "error":
        logging.getLogger(SERVER_LOGGER).error("request %s failed: %s", request_id, ended.error)
        raise ApiError(500, f"the model failed on this request (request id {request_id}; the "
                            f"server's log has the cause)")
    if ended.reason == "cancelled":
        raise ApiError(503, "the request was cancelled (the server is stopping)",
                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
