"""`qwen-np serve`: an OpenAI-compatible HTTP server over one model, with continuous batching.

Endpoints (OpenAI's request and response shapes):

    GET  /health                  {"status": "ok", "running": r, "waiting": w} (no key needed)
    GET  /v1/models               the one model, under the name it is served as
    POST /v1/completions          a prompt (text or token ids) -> its continuation
    POST /v1/chat/completions     messages -> the assistant's answer (the model's ChatML)

The flow of one request:

    HTTP body (at most max_body_bytes, counted as it is read)
      -> a Job: prompt ids (the chat prompt built by chat.py), max_tokens, stop strings, and
         the sampling settings as one Sampling value (sampling.py checks their ranges)
      -> Batcher.submit (batch.py; its loop runs in a thread of its own and joins the request
         to the running batch at its next turn)
      -> emit(token, finish), called in the batcher's thread, hands each item to the
         request's asyncio.Queue through loop.call_soon_threadsafe
      -> StopText: the text of the tokens so far (the tokenizer's decode of all of them),
         released as it becomes final: not while it ends in an unfinished UTF-8 character,
         nor a tail that could be the start of a stop string; a stop string ends the text
         before it and cancels the request in the batcher (its slot is freed)
      -> one JSON response, or server-sent events (`data: {json}` ... `data: [DONE]`)

A request whose client goes away is cancelled in the batcher: a stream when Starlette closes
its body generator (the generator's `finally`), a plain request when polling
`is_disconnected()` sees it. Errors are OpenAI's `{"error": {"message", "type", "param",
"code"}}`: 400 for a bad body or parameter (and a prompt that does not fit the context), 401
for a missing or wrong key, 404, 405, 413 for a body over the limit, 500 if the model step
failed, 503 with Retry-After when every slot is taken and the waiting line is full.

Defaults are OpenAI's (temperature 1, top_p 1; max_tokens 16 for completions); for chat,
max_tokens defaults to what the context leaves. Beyond OpenAI's fields the server reads
`top_k`, `repetition_penalty` and `ignore_eos` (vLLM's names). Unknown fields are ignored;
fields asking for what the server does not do (n > 1, logprobs, penalties, tools) are a 400.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from qwen_np.runtime.batch import Batcher, QueueFull
from qwen_np.runtime.chat import messages_prompt_ids
from qwen_np.errors import InputError, QwenNpError
from qwen_np.model.sampling import Sampling
from qwen_np.runtime.tokenizer import DEFAULT_SYSTEM_BY_MODEL_TYPE

MAX_BODY_BYTES = 1 << 20           # a larger request body is refused (413) before it is parsed
RETRY_AFTER_SECONDS = 1            # told to a client refused with 503
DISCONNECT_POLL_SECONDS = 0.5      # how often a plain (not streamed) request checks its client
SHUTDOWN_GRACE_SECONDS = 5         # on Ctrl-C / SIGTERM, open requests get this long to finish
MAX_STOP_STRINGS = 4               # OpenAI's limit
CHAT_ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    """A request the server refuses, with its HTTP status, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


def error_body(status: int, message: str, param=None, code=None) -> dict:
    """OpenAI's error object (its type: invalid_request_error for a 4xx, as OpenAI's 401
    and 404 are too; server_error for a 5xx)."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# -- the application ---------------------------------------------------------------------------

def make_app(model, batcher: Batcher, model_name: str, api_key: str | None = None,
             max_body_bytes: int = MAX_BODY_BYTES) -> Starlette:
    """The ASGI application serving `model` through `batcher` (started) as
    `model_name`. With `api_key`, every /v1 request must carry `Authorization: Bearer KEY`."""
    tokenizer = model.tokenizer
    created = int(time.time())

    async def read_body(http_request: Request) -> dict:
        check_api_key(http_request, api_key)
        return await read_json_body(http_request, max_body_bytes)

    async def health(http_request: Request) -> Response:
        running, waiting = batcher.load
        return JSONResponse({"status": "ok", "model": model_name, "running": running,
                             "waiting": waiting})

    async def models(http_request: Request) -> Response:
        check_api_key(http_request, api_key)
        return JSONResponse({"object": "list", "data": [model_card(model_name, created)]})

    async def one_model(http_request: Request) -> Response:
        check_api_key(http_request, api_key)
        name = http_request.path_params["name"]
        if name != model_name:
            raise ApiError(404, f"no model {name!r} here; this server serves {model_name!r}",
                           param="model", code="model_not_found")
        return JSONResponse(model_card(model_name, created))

    async def completions(http_request: Request) -> Response:
        body = await read_body(http_request)
        job = read_job(body, completion_prompt_ids(body, tokenizer, model.config.vocab_size),
                       default_max_tokens=16)
        return await answer(http_request, job, chat=False)

    async def chat_completions(http_request: Request) -> Response:
        body = await read_body(http_request)
        model_type = model.config.model_type
        ids = messages_prompt_ids(tokenizer, model_type, chat_messages(body),
                                  DEFAULT_SYSTEM_BY_MODEL_TYPE.get(model_type))
        job = read_job(body, ids, default_max_tokens=batcher.context, chat=True)
        return await answer(http_request, job, chat=True)

    async def answer(http_request: Request, job: Job, chat: bool) -> Response:
        request, queue = start_generation(batcher, job, "messages" if chat else "prompt")
        head = {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
                "object": response_object(chat, job.stream), "created": int(time.time()),
                "model": model_name}
        text = StopText(tokenizer, job.stop)
        if job.stream:
            events = stream_events(batcher, request, queue, text, head, chat, len(job.ids),
                                   job.include_usage)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"},
                                     background=BackgroundTask(cancel_unfinished, batcher,
                                                               request))
        return JSONResponse(await whole_answer(http_request, batcher, request, queue, text,
                                               head, chat, len(job.ids)))

    routes = [Route("/health", health, methods=["GET"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/v1/models/{name:path}", one_model, methods=["GET"]),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={
        ApiError: api_error_response, HTTPException: http_error_response,
        QwenNpError: input_error_response, Exception: internal_error_response})


def model_card(model_name: str, created: int) -> dict:
    return {"id": model_name, "object": "model", "created": created, "owned_by": "qwen-np"}


async def api_error_response(http_request: Request, e: ApiError) -> Response:
    return JSONResponse(error_body(e.status, e.message, e.param, e.code), status_code=e.status,
                        headers=e.headers)


async def http_error_response(http_request: Request, e: HTTPException) -> Response:
    """Starlette's own refusals (404 unknown path, 405 wrong method) in OpenAI's shape."""
    message = {404: f"no such endpoint: {http_request.url.path}",
               405: f"{http_request.method} is not allowed on {http_request.url.path}"}.get(
        e.status_code, str(e.detail))
    return JSONResponse(error_body(e.status_code, message), status_code=e.status_code,
                        headers=e.headers)


async def input_error_response(http_request: Request, e: QwenNpError) -> Response:
    """qwen-np's own refusals (text the tokenizer cannot encode, a chat with a model that has
    no ChatML tokens) are the request's to fix."""
    return JSONResponse(error_body(400, str(e)), status_code=400)


async def internal_error_response(http_request: Request, e: Exception) -> Response:
    return JSONResponse(error_body(500, f"internal error: {type(e).__name__}: {e}"),
                        status_code=500)


def check_api_key(http_request: Request, api_key: str | None) -> None:
    """401 unless the request carries `Authorization: Bearer <api_key>` (when a key is set)."""
    if api_key is None:
        return
    scheme, _, given = http_request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, "no API key given: send it as 'Authorization: Bearer KEY'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.strip().encode(), api_key.encode()):
        raise ApiError(401, "incorrect API key", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})


async def read_json_body(http_request: Request, max_bytes: int) -> dict:
    """The body as a JSON object. A body over max_bytes is refused unparsed (413): at once if
    its Content-Length says so, else as soon as the bytes read pass the limit (a chunked body
    has no Content-Length)."""
    declared = http_request.headers.get("content-length", "")   # (uvicorn checks its form)
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise body_too_large(max_bytes)
    body = bytearray()
    try:
        async for chunk in http_request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise body_too_large(max_bytes)
    except ClientDisconnect:
        raise ApiError(400, "the request body ended early") from None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as e:     # UnicodeDecodeError is a ValueError
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the body must be a JSON object")
    return value


def body_too_large(max_bytes: int) -> ApiError:
    return ApiError(413, f"the request body is larger than {max_bytes} bytes",
                    code="request_too_large")


# -- reading a request's parameters ------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """What one request asks of the batcher, read from its body."""
    ids: list[int]                   # the prompt's token ids
    max_tokens: int
    sampling: Sampling
    stop: tuple[str, ...]            # stop strings
    stop_ids: list[int] | None       # None: the model's own (EOS, <|im_end|>); []: ignore_eos
    stream: bool
    include_usage: bool              # stream_options.include_usage: a last chunk with usage


# fields whose only accepted values ask for nothing the server does not do
PLAIN_VALUES = {"n": (None, 1), "best_of": (None, 1), "echo": (None, False),
                "suffix": (None, ""), "logprobs": (None, False), "top_logprobs": (None, 0),
                "logit_bias": (None, {}), "frequency_penalty": (None, 0),
                "presence_penalty": (None, 0), "tools": (None, []), "functions": (None, []),
                "tool_choice": (None, "none"), "response_format": (None, {"type": "text"})}


def read_job(body: dict, ids: list[int], default_max_tokens: int, chat: bool = False) -> Job:
    """The body's settings for a prompt already turned into ids; 400 for any out of range."""
    for name, plain in PLAIN_VALUES.items():
        value = body.get(name)
        # (True == 1 and False == 0 in Python: a boolean matches only a boolean)
        if not any(value == p and isinstance(value, bool) == isinstance(p, bool) for p in plain):
            raise ApiError(400, f"{name} = {shown(value)} is not supported by this "
                                f"server (only {' or '.join(json.dumps(p) for p in plain)})",
                           param=name, code="unsupported_parameter")
    max_tokens = body.get("max_completion_tokens") if chat else None
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = default_max_tokens
    if not is_int(max_tokens) or max_tokens < 1:
        raise ApiError(400, f"max_tokens is {shown(max_tokens)}; it must be an integer "
                            f">= 1", param="max_tokens")
    stream = flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and not (isinstance(options, dict) and stream):
        raise ApiError(400, "stream_options must be an object, and only with stream: true",
                       param="stream_options")
    include_usage = bool(options) and flag(options, "include_usage", "stream_options.")
    return Job(ids, max_tokens, sampling_of(body), stop_strings(body),
               [] if flag(body, "ignore_eos") else None, stream, include_usage)


def sampling_of(body: dict) -> Sampling:
    """The body's sampling settings as one Sampling value (OpenAI's defaults: temperature 1,
    top_p 1; top_k 0 or -1 keeps all tokens)."""
    values = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0,
              "seed": None}
    for name in values:
        if body.get(name) is not None:
            values[name] = body[name]
    if values["top_k"] == -1 and is_int(values["top_k"]):
        values["top_k"] = 0                                  # vLLM's "all tokens"
    # whole numbers only (keep_top_k cannot take 2.0; numpy's generator, a seed below 0)
    for name in ("top_k", "seed"):
        value = values[name]
        if value is not None and not (is_int(value) and value >= 0):
            raise ApiError(400, f"{name} is {shown(value)}; it must be an integer >= 0",
                           param=name)
    try:
        return Sampling(**values)
    except InputError as e:                                  # "<name> is <value>; allowed ..."
        raise ApiError(400, str(e), param=next(
            (n for n in values if str(e).startswith(n + " ")), None)) from None


def stop_strings(body: dict) -> tuple[str, ...]:
    """`stop`: a string, or a list of up to 4 non-empty strings."""
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not (isinstance(stops, list) and len(stops) <= MAX_STOP_STRINGS
            and all(isinstance(s, str) and s for s in stops)):
        raise ApiError(400, f"stop must be a non-empty string or a list of up to "
                            f"{MAX_STOP_STRINGS} of them", param="stop")
    return tuple(stops)


def flag(body: dict, name: str, inside: str = "") -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise ApiError(400, f"{inside}{name} must be true or false", param=inside + name)
    return bool(value)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def shown(value) -> str:
    """A value from the body as JSON, cut short for an error message."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def completion_prompt_ids(body: dict, tokenizer, vocab_size: int) -> list[int]:
    """`prompt`: a string or a list of token ids (or a list holding one of those)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    elif isinstance(prompt, list) and all(is_int(i) for i in prompt):
        ids = prompt
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary "
                                f"(0..{vocab_size - 1})", param="prompt")
    elif isinstance(prompt, list) and all(isinstance(p, (str, list)) for p in prompt):
        raise ApiError(400, f"{len(prompt)} prompts in one request; this server takes one",
                       param="prompt")
    else:
        raise ApiError(400, "prompt must be a string or a list of token ids", param="prompt")
    if not ids:
        raise ApiError(400, "the prompt is empty", param="prompt")
    return ids


def chat_messages(body: dict) -> list[dict]:
    """`messages` as [{"role", "content": str}]: roles system (or developer), user and
    assistant; content a string or a list of text parts (joined by newlines)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    plain = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        role = "system" if role == "developer" else role
        if role not in CHAT_ROLES:
            raise ApiError(400, f"messages[{i}]: role {shown(role)} is not one of "
                                f"{', '.join(CHAT_ROLES)}", param=f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list) and all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                for p in content):
            content = "\n".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}]: content must be a string or a list of "
                                f"{{\"type\": \"text\"}} parts", param=f"messages[{i}].content")
        plain.append({"role": role, "content": content})
    return plain


# -- from the batcher's thread to the text of the answer ---------------------------------------

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
        request = batcher.submit(job.ids, job.max_tokens, job.sampling, job.stop_ids, emit)
    except QueueFull as e:
        raise ApiError(503, str(e), code="server_busy",
                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
    except InputError as e:      # the prompt does not fit the context
        raise ApiError(400, str(e), param=prompt_param, code="context_length_exceeded") from None
    return request, queue


@dataclass(frozen=True)
class Ended:
    """How a generation ended: "stop", "length", "cancelled" or "error"."""
    reason: str
    completion_tokens: int
    error: str | None = None


async def generated_text(batcher: Batcher, request, queue: asyncio.Queue, text: "StopText"):
    """The answer's text in pieces as they become final, then one Ended. Whatever way this
    generator ends (done, closed, cancelled), the request does not outlive it."""
    try:
        while True:
            token, finish = await queue.get()
            if finish is None:
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


def raise_for_failure(ended: Ended) -> None:
    if ended.reason == "error":
        raise ApiError(500, f"the model failed on this request: {ended.error}")
    if ended.reason == "cancelled":
        raise ApiError(503, "the request was cancelled (the server is stopping)",
                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


class StopText:
    """The text of the tokens generated so far, released as it becomes final.

    The text is the tokenizer's decode of all the tokens so far. It is held back while it ends
    in an unfinished UTF-8 character (the decode ends in U+FFFD) and, of the rest, the tail
    that could be the start of a stop string. Once a stop string appears, the text ends just
    before its first occurrence (`stopped`). No stop string can begin inside text already
    released (its start would have been held back), so each search starts there."""

    def __init__(self, tokenizer, stops: tuple[str, ...]):
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.released = 0            # characters of the text released so far
        self.stopped = False

    def add(self, token: int) -> str:
        """The newly final text after one more token."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        return self.release(text, len(text) - stop_prefix_length(text, self.stops))

    def finish(self) -> str:
        """The rest of the text, once no token will follow."""
        text = self.tokenizer.decode(self.ids)
        return self.release(text, len(text))

    def release(self, text: str, end: int) -> str:
        found = [at for at in (text.find(s, self.released) for s in self.stops) if at >= 0]
        if found:
            end, self.stopped = min(found), True
        piece = text[self.released:end]
        self.released = max(self.released, end)
        return piece


def stop_prefix_length(text: str, stops: tuple[str, ...]) -> int:
    """The length of the longest tail of `text` that is the start of a stop string (and not a
    whole one)."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1)
                if text.endswith(s[:k])), default=0)


# -- OpenAI's response shapes ------------------------------------------------------------------

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


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(data) -> bytes:
    """One server-sent event."""
    return b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode()) + b"\n\n"


async def whole_answer(http_request: Request, batcher: Batcher, request, queue: asyncio.Queue,
                       text: StopText, head: dict, chat: bool, prompt_tokens: int) -> dict:
    """The answer as one response object, once the generation has ended. Meanwhile the client
    is polled: if it goes away, the generation is cancelled."""
    watch = asyncio.create_task(cancel_on_disconnect(http_request, batcher, request))
    pieces, ended = [], None
    try:
        async for item in generated_text(batcher, request, queue, text):
            if isinstance(item, Ended):
                ended = item
            else:
                pieces.append(item)
    finally:
        watch.cancel()
        cancel_unfinished(batcher, request)
    raise_for_failure(ended)
    return {**head, "choices": [whole_choice(chat, "".join(pieces), ended.reason)],
            "usage": usage(prompt_tokens, ended.completion_tokens)}


async def stream_events(batcher: Batcher, request, queue: asyncio.Queue, text: StopText,
                        head: dict, chat: bool, prompt_tokens: int, include_usage: bool):
    """The streamed answer as server-sent events: chunks of text (a chat's first chunk also
    carries the role), a last chunk with the finish reason, optionally one with the usage and
    no choices, then [DONE]. A failure mid-stream is an event holding OpenAI's error object."""
    extra = {"usage": None} if include_usage else {}
    if chat:
        yield sse({**head, "choices": [chunk_choice(chat, "", None, first=True)], **extra})
    async for item in generated_text(batcher, request, queue, text):
        if not isinstance(item, Ended):
            yield sse({**head, "choices": [chunk_choice(chat, item, None)], **extra})
            continue
        try:
            raise_for_failure(item)
        except ApiError as e:
            yield sse(error_body(e.status, e.message))
            break
        yield sse({**head, "choices": [chunk_choice(chat, None, item.reason)], **extra})
        if include_usage:
            yield sse({**head, "choices": [],
                       "usage": usage(prompt_tokens, item.completion_tokens)})
    yield sse(b"[DONE]")


# -- running it --------------------------------------------------------------------------------

def run_server(model, model_name: str, host: str = "127.0.0.1", port: int = 8000,
               api_key: str | None = None, max_batch: int = 8, context: int = 2048,
               max_waiting: int = 64) -> None:
    """Serve until Ctrl-C or SIGTERM (call from the main thread): bind, warm up, print one
    line when ready, and on the way out give open requests SHUTDOWN_GRACE_SECONDS.

    The HTTP server runs in a thread of its own, and the batcher's loop in this thread, the
    one that loaded the model: the kernels then run in one thread only (batch.Batcher.start
    says why that matters)."""
    import uvicorn
    model.tokenizer                                  # no tokenizer: a one-line error now
    batcher = Batcher(model, max_batch=max_batch, context=context, max_waiting=max_waiting)
    sock = listening_socket(host, port)
    server = uvicorn.Server(uvicorn.Config(
        make_app(model, batcher, model_name, api_key), log_level="warning", lifespan="off",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS))
    interrupted = []

    def stop(sig, frame):       # uvicorn then lets open requests finish, and returns
        interrupted.append(sig)
        server.should_exit = True

    def serve_http():
        try:
            server.run(sockets=[sock])
        finally:
            batcher.close()     # the loop below ends once the HTTP server has
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://[{bound_host}]:{bound_port}" if ":" in bound_host else \
        f"http://{bound_host}:{bound_port}"
    batcher.warm_up()
    http = threading.Thread(target=serve_http, name="qwen-np http", daemon=True)
    http.start()
    print(f"qwen-np: serving {model_name} on {url} (backend {model.backend.name}, "
          f"{max_batch} slots, context {context})", file=sys.stderr, flush=True)
    try:
        batcher.run()
        http.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if signal.SIGINT in interrupted:
        raise KeyboardInterrupt      # the CLI's exit status 130


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise QwenNpError(f"{host}:{port}: cannot listen there ({reason})") from None
