"""From the batcher's thread to the text of the answer: a Job's choices submitted to the
batcher (one request, one batch row, per choice), their tokens handed to one asyncio.Queue,
and each choice's text pieces as its StopText releases them.

A request whose client goes away is cancelled in the batcher: a stream when Starlette closes
its body generator (the generator's `finally`), a plain request when polling
`is_disconnected()` sees it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from dataclasses import dataclass

from starlette.requests import Request

from qwen_np.apps.serve.chat_output import ChatOutput
from qwen_np.apps.serve.job import Job
from qwen_np.apps.serve.metrics import RequestTiming
from qwen_np.apps.serve.openai_errors import ApiError
from qwen_np.apps.serve.request_log import SERVER_LOGGER
from qwen_np.apps.serve.stop_text import StopText
from qwen_np.errors import InputError
from qwen_np.runtime.batch import Batcher, Closed, QueueFull

RETRY_AFTER_SECONDS = 1            # told to a client refused with 503
DISCONNECT_POLL_SECONDS = 0.5      # how often a plain (not streamed) request checks its client


@dataclass(frozen=True)
class Ended:
    """How a generation ended: "stop", "length", "cancelled" or "error"."""
    reason: str
    completion_tokens: int
    error: str | None = None


@dataclass(eq=False)
class Choice:
    """One choice of the answer: its request in the batcher, its text so far, how many of
    its tokens' log-probabilities have been given out, and how it ended."""
    index: int
    request: object                  # runtime/batch.py's Request
    text: StopText
    logprobs_sent: int = 0
    offset: int = 0                  # characters of its text before its next logprobs' token
    ended: Ended | None = None
    output: ChatOutput | None = None     # a chat's: reasoning and tool calls apart


def start_generation(batcher: Batcher, job: Job, prompt_param: str, tokenizer):
    """Submit the job's n choices; (choices, the asyncio.Queue their items arrive on:
    (index, token, None) per token, then (index, None, reason)). Raises 400 / 503 as the
    batcher refuses (400 naming `prompt_param`, the field the prompt came from); a refusal of
    any choice cancels those already submitted."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def emitter(index):
        def emit(token, finish):     # in the batcher's thread: must not raise, must not block
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (index, token, finish))
            except RuntimeError:     # the event loop has closed: nobody is waiting any more
                pass
        return emit

    choices = []
    try:
        for i in range(job.n):
            sampling = job.sampling
            if i and sampling.seed is not None:           # seeded apart
                sampling = dataclasses.replace(sampling, seed=sampling.seed + i)
            constraint = job.constraints[i] if job.constraints is not None else None
            request = batcher.submit(job.ids, job.max_tokens, sampling, job.stop_ids,
                                     emitter(i), cache_prompt=job.cache_prompt,
                                     logprobs=job.logprobs,
                                     prompt_logprobs=job.echo and job.logprobs is not None,
                                     constraint=constraint,
                                     prompt_lookup=job.prompt_lookup)
            output = ChatOutput(job.split_reasoning, job.tool_names,
                                f"call_{secrets.token_hex(6)}_") if job.chat else None
            choices.append(Choice(i, request, StopText(tokenizer, job.stop), output=output))
    except (QueueFull, Closed) as e:
        cancel_all(batcher, choices)
        raise ApiError(503, str(e), code="server_busy" if isinstance(e, QueueFull) else
                       "server_stopping", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) \
            from None
    except InputError as e:      # the prompt does not fit the context
        cancel_all(batcher, choices)
        raise ApiError(400, str(e), param=prompt_param, code="context_length_exceeded") from None
    return choices, queue


async def choice_events(batcher: Batcher, choices: list[Choice], queue: asyncio.Queue,
                        timing: RequestTiming):
    """(choice, text piece) as each piece becomes final, and (choice, Ended) as each choice
    ends, until all have. Whatever way this generator ends (done, closed, cancelled), no
    request outlives it."""
    open_choices = len(choices)
    try:
        while open_choices:
            index, token, finish = await queue.get()
            choice = choices[index]
            if choice.ended is not None:       # tokens after its stop string
                continue
            if finish is None:
                timing.token()
                piece = choice.text.add(token)
            else:
                piece = choice.text.finish() if finish in ("stop", "length") else ""
            if piece:
                yield choice, piece
            if choice.text.stopped:   # a stop string: the rest of the generation is not wanted
                batcher.cancel(choice.request)
                choice.ended = Ended("stop", len(choice.text.ids))
            elif finish is not None:
                choice.ended = Ended(finish, len(choice.request.generated),
                                     choice.request.error)
            if choice.ended is not None:
                open_choices -= 1
                yield choice, choice.ended
    finally:
        cancel_all(batcher, choices)


def cancel_all(batcher: Batcher, choices: list[Choice]) -> None:
    for choice in choices:
        cancel_unfinished(batcher, choice.request)


def cancel_unfinished(batcher: Batcher, request) -> None:
    if request.finish is None:
        batcher.cancel(request)


async def cancel_on_disconnect(http_request: Request, batcher: Batcher,
                               choices: list[Choice]) -> None:
    """Poll whether the client of a plain request is still there; cancel it if not."""
    while any(c.request.finish is None for c in choices):
        if await http_request.is_disconnected():
            cancel_all(batcher, choices)
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
