"""The application: Starlette's routes, one per endpoint, over the batcher."""

from __future__ import annotations

import time
import uuid

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from qwen_np.apps.serve.answer import response_object, stream_events, whole_answer
from qwen_np.apps.serve.api_key import check_api_key
from qwen_np.apps.serve.generation import cancel_unfinished, start_generation
from qwen_np.apps.serve.job import Job, chat_messages, completion_prompt_ids, read_job
from qwen_np.apps.serve.json_body import MAX_BODY_BYTES, read_json_body
from qwen_np.apps.serve.openai_errors import (ApiError, api_error_response, http_error_response,
                                              input_error_response, internal_error_response)
from qwen_np.apps.serve.stop_text import StopText
from qwen_np.errors import QwenNpError
from qwen_np.runtime.batch import Batcher
from qwen_np.runtime.chat import messages_prompt_ids
from qwen_np.runtime.tokenizer import DEFAULT_SYSTEM_BY_MODEL_TYPE


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
