"""The application: Starlette's routes, one per endpoint, over the batcher.

Nothing slow runs in the event loop: a prompt is turned into ids by one worker thread (a
prompt too long for the context is refused by its length before that: tokens_at_least), so
that /health and every open stream go on while a large prompt is encoded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route

from qwen_np.apps.serve.answer import response_object, stream_events, whole_answer
from qwen_np.apps.serve.api_key import check_api_key
from qwen_np.apps.serve.generation import cancel_all, start_generation
from qwen_np.apps.serve.chat_request import ChatRequest, read_chat_request
from qwen_np.apps.serve.job import Job, completion_prompt_ids, is_int, read_job
from qwen_np.apps.serve.json_body import BODY_TIMEOUT_SECONDS, MAX_BODY_BYTES, read_json_body
from qwen_np.apps.serve.openai_errors import (ApiError, api_error_response, http_error_response,
                                              input_error_response)
from qwen_np.apps.serve.metrics import RequestTiming, server_metrics
from qwen_np.apps.serve.origins import OriginCheck
from qwen_np.apps.serve.request_log import RequestLog
from qwen_np.errors import InputError, QwenNpError
from qwen_np.runtime.batch import Batcher
from qwen_np.runtime.constraint import GrammarCompiler


def make_app(model, batcher: Batcher, model_name: str, api_key: str | None = None,
             max_body_bytes: int = MAX_BODY_BYTES, body_timeout: float = BODY_TIMEOUT_SECONDS,
             allowed_origins: tuple[str, ...] = (), loopback_only: bool = False) -> Starlette:
    """The ASGI application serving `model` through `batcher` (started) as
    `model_name`. With `api_key`, every /v1 request must carry `Authorization: Bearer KEY`.
    `allowed_origins` and `loopback_only`: origins.py."""
    tokenizer = model.tokenizer
    created = int(time.time())
    longest_token = tokenizer.longest_token_bytes()
    metrics = server_metrics(batcher)
    encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwen-np tokenizer")
    grammars = GrammarCompiler(tokenizer, model.config.vocab_size, model.stop_ids())

    async def read_body(http_request: Request) -> dict:
        check_api_key(http_request, api_key)
        return await read_json_body(http_request, max_body_bytes, body_timeout)

    async def off_the_loop(function, *args):
        """function(*args) in the tokenizer's thread (one: the tokenizer is not shared)."""
        return await asyncio.get_running_loop().run_in_executor(encoder, function, *args)

    def refuse_by_length(texts: list[str], param: str) -> None:
        """400 before encoding for text that cannot fit: every token holds at most
        `longest_token` bytes of it, so it is at least bytes / longest_token tokens."""
        at_least = tokens_at_least(texts, longest_token)
        if at_least >= batcher.context:
            raise ApiError(400, f"the prompt is at least {at_least} tokens; the context holds "
                                f"{batcher.context}, and one more is needed for the answer",
                           param=param, code="context_length_exceeded")

    async def health(http_request: Request) -> Response:
        running, waiting = batcher.load
        if not batcher.alive:
            return JSONResponse({"status": "error", "model": model_name,
                                 "error": "the batcher's loop is not running"},
                                status_code=503)
        return JSONResponse({"status": "ok", "model": model_name, "running": running,
                             "waiting": waiting})

    async def metrics_text(http_request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def count(path: str, status: int) -> None:
        metrics.requests.labels(path if path in known_paths else "other", str(status)).inc()

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
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            refuse_by_length([prompt], "prompt")
        ids = await off_the_loop(completion_prompt_ids, body, tokenizer,
                                 model.config.vocab_size)
        job = read_job(body, ids, default_max_tokens=16)
        return await answer(http_request, job, chat=False)

    async def chat_completions(http_request: Request) -> Response:
        body = await read_body(http_request)
        chat = read_chat_request(body)
        refuse_by_length([m["content"] for m in chat.messages], "messages")
        ids = await off_the_loop(chat_ids, chat)
        job = read_job(body, ids, default_max_tokens=batcher.context, chat=True,
                       sampling_defaults=model.generation_defaults)
        constraints = None
        if needs_constraint(chat):
            constraints = await off_the_loop(compile_constraints, grammars, chat, job.n)
        job = dataclasses.replace(job, split_reasoning=splits_reasoning(model, chat),
                                  tool_names=parsed_tool_names(chat), constraints=constraints)
        return await answer(http_request, job, chat=True)

    def chat_ids(chat: ChatRequest) -> list[int]:
        """The chat's prompt ids (in the tokenizer's thread): a template that fails on these
        messages is a 400."""
        try:
            return model.chat_prompt_ids(chat.messages, chat.tools, **chat.template_kwargs)
        except InputError as e:
            raise ApiError(400, str(e), param="messages", code="invalid_chat") from None

    async def tokenize(http_request: Request) -> Response:
        """{"prompt": text} or a chat request's messages (with tools, add_generation_prompt,
        chat_template_kwargs) -> {"tokens": the ids the server would decode from, "count"}."""
        body = await read_body(http_request)
        if "messages" in body:
            chat = read_chat_request(body)
            add = body.get("add_generation_prompt", True)
            if not isinstance(add, bool):
                raise ApiError(400, "add_generation_prompt must be true or false",
                               param="add_generation_prompt")
            refuse_by_length([m["content"] for m in chat.messages], "messages")
            ids = await off_the_loop(chat_ids, dataclasses.replace(
                chat, template_kwargs={**chat.template_kwargs, "add_generation_prompt": add}))
        elif isinstance(body.get("prompt"), str):
            refuse_by_length([body["prompt"]], "prompt")
            ids = await off_the_loop(tokenizer.encode, body["prompt"])
        else:
            raise ApiError(400, "give \"prompt\" (a string) or \"messages\"", param="prompt")
        return JSONResponse({"tokens": ids, "count": len(ids),
                             "max_model_len": batcher.context})

    async def detokenize(http_request: Request) -> Response:
        body = await read_body(http_request)
        ids = body.get("tokens")
        if not (isinstance(ids, list) and all(is_int(i) and 0 <= i < model.config.vocab_size
                                              for i in ids)):
            raise ApiError(400, f"tokens must be a list of token ids (0.."
                                f"{model.config.vocab_size - 1})", param="tokens")
        return JSONResponse({"prompt": await off_the_loop(tokenizer.decode, ids)})

    async def answer(http_request: Request, job: Job, chat: bool) -> Response:
        choices, queue = start_generation(batcher, job, "messages" if chat else "prompt",
                                          tokenizer)
        metrics.prompt_tokens.inc(len(job.ids))
        timing = RequestTiming(metrics, getattr(http_request.state, "started", time.monotonic()))
        request_id = http_request.state.request_id
        head = {"id": ("chatcmpl-" if chat else "cmpl-") + request_id,
                "object": response_object(chat, job.stream), "created": int(time.time()),
                "model": model_name}
        if job.stream:
            events = stream_events(batcher, choices, queue, job, head, chat, tokenizer,
                                   request_id, timing)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"},
                                     background=BackgroundTask(cancel_all, batcher, choices))
        return JSONResponse(await whole_answer(http_request, batcher, choices, queue, job,
                                               head, chat, tokenizer, request_id, timing))

    routes = [Route("/health", health, methods=["GET"]),
              Route("/metrics", metrics_text, methods=["GET"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/v1/models/{name:path}", one_model, methods=["GET"]),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/tokenize", tokenize, methods=["POST"]),
              Route("/detokenize", detokenize, methods=["POST"])]
    known_paths = {r.path for r in routes}
    middleware = [Middleware(RequestLog, count=count)]
    if allowed_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(allowed_origins),
                                     allow_methods=["GET", "POST"], allow_headers=["*"],
                                     expose_headers=["x-request-id"], max_age=600))
    middleware.append(Middleware(OriginCheck, allowed_origins=tuple(allowed_origins),
                                 loopback_only=loopback_only))
    return Starlette(routes=routes, middleware=middleware, exception_handlers={
        ApiError: api_error_response, HTTPException: http_error_response,
        QwenNpError: input_error_response})


def needs_constraint(chat: ChatRequest) -> bool:
    return chat.response_format is not None or chat.tool_choice == "required" or \
        isinstance(chat.tool_choice, dict)


def compile_constraints(grammars: GrammarCompiler, chat: ChatRequest, n: int) -> list:
    """One Constraint per choice (runtime/constraint.py): the tool-call grammar for
    tool_choice "required" or a named function, else the response_format's; a schema the
    engine cannot compile is a 400 naming the field."""
    tool_choice = chat.tool_choice
    try:
        if tool_choice == "required" or isinstance(tool_choice, dict):
            name = tool_choice["name"] if isinstance(tool_choice, dict) else None
            return [grammars.tool_calls(chat.tools, name, chat.parallel_tool_calls)
                    for _ in range(n)]
        if chat.response_format["type"] == "json_object":
            return [grammars.json_object() for _ in range(n)]
        return [grammars.json_schema(chat.response_format["schema"],
                                     "response_format.json_schema.schema") for _ in range(n)]
    except InputError as e:
        field = "tools" if tool_choice == "required" or isinstance(tool_choice, dict) \
            else "response_format"
        raise ApiError(400, str(e), param=field, code="invalid_schema") from None


def splits_reasoning(model, chat: ChatRequest) -> bool:
    """Whether the answer's <think> block goes to reasoning_content: a template that thinks,
    thinking not turned off, and reasoning_format "auto"."""
    return chat.reasoning_format == "auto" and model.chat_format.thinks and \
        chat.template_kwargs.get("enable_thinking", True) is not False


def parsed_tool_names(chat: ChatRequest) -> tuple | None:
    """The tools whose calls are parsed out of the answer (None: no parsing)."""
    return tuple(chat.tool_names) if chat.tools and chat.tool_choice != "none" else None


def tokens_at_least(texts: list[str], longest_token_bytes: int) -> int:
    """A lower bound on the tokens of `texts`, from their UTF-8 lengths alone (counted
    without encoding: a character takes at least 1 byte and at most 4)."""
    return sum(-(-utf8_length(t) // longest_token_bytes) for t in texts)


def utf8_length(text: str) -> int:
    """len(text.encode("utf-8")), a lone surrogate counted as 3 bytes (json_body.py refuses
    those, but a bound must not fail)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def model_card(model_name: str, created: int) -> dict:
    return {"id": model_name, "object": "model", "created": created, "owned_by": "qwen-np"}
