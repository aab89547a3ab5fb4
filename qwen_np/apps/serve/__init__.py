"""`qwen-np serve`: an OpenAI-compatible HTTP server over one model, with continuous batching.

Endpoints (OpenAI's request and response shapes):

    GET  /health                  {"status": "ok", "running": r, "waiting": w} (no key needed;
                                  503 when the batcher's loop is not running)
    GET  /metrics                 Prometheus's text format (metrics.py; no key needed)
    GET  /v1/models               the one model, under the name it is served as
    POST /v1/completions          a prompt (text or token ids) -> its continuation
    POST /v1/chat/completions     messages (and tools) -> the assistant's answer (the model's
                                  chat template; reasoning and tool calls apart)
    POST /tokenize, /detokenize   text or a chat request <-> the token ids the server uses

The flow of one request:

    HTTP body (at most max_body_bytes, counted as it is read)
      -> a Job: prompt ids (the chat prompt built by runtime/chat.py), max_tokens, stop strings, and
         the sampling settings as one Sampling value (model/sampling.py checks their ranges)
      -> Batcher.submit (runtime/batch.py; its loop runs in a thread of its own and joins the request
         to the running batch at its next turn)
      -> emit(token, finish), called in the batcher's thread, hands each item to the
         request's asyncio.Queue through loop.call_soon_threadsafe
      -> StopText: the text of the tokens so far (the tokenizer's decode stream),
         released as it becomes final: not while it ends in an unfinished UTF-8 character,
         nor a tail that could be the start of a stop string; a stop string ends the text
         before it and cancels the request in the batcher (its slot is freed)
      -> for chat, ChatOutput: <think> to reasoning_content, <tool_call> blocks to tool_calls
      -> one JSON response, or server-sent events (`data: {json}` ... `data: [DONE]`)

The modules, in that order:

    api_key.py        the `Authorization: Bearer KEY` check
    json_body.py      the body, read within its size limit, as a JSON object
    chat_request.py   a chat body's messages, tools, tool_choice, response_format and
                      template arguments, checked
    job.py            the body's fields -> a Job (prompt ids, max_tokens, stops, Sampling, n,
                      logprobs, echo)
    generation.py     the Job's n choices submitted to the batcher; their tokens back on an
                      asyncio.Queue
    stop_text.py      StopText: the text released as it becomes final, and stop strings
    chat_output.py    a chat answer's text -> reasoning_content, content, tool_calls
    answer.py         OpenAI's response shapes: one JSON object, or server-sent events
    logprobs.py       log-probabilities in OpenAI's chat and completions shapes
    metrics.py        the Prometheus metrics
    openai_errors.py  every refusal in OpenAI's error shape
    request_log.py    request ids, the access log, the log's configuration (no floods)
    origins.py        which web pages and host names may reach the server
    app.py            the Starlette routes over all of the above (make_app)
    connections.py    how many connections, and how long a client may take to send its head
    __init__.py       run_server: the HTTP server and the batcher's loop, each in its thread,
                      and how they stop
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass

from qwen_np.apps.serve.app import make_app
from qwen_np.apps.serve.connections import (ACCEPT_BATCH, ConnectionLimits, bounded_protocol,
                                            connection_cap, raise_open_files_limit)
from qwen_np.apps.serve.json_body import BODY_TIMEOUT_SECONDS
from qwen_np.apps.serve.origins import is_loopback
from qwen_np.apps.serve.request_log import logging_config
from qwen_np.errors import QwenNpError
from qwen_np.runtime.batch import Batcher


@dataclass(frozen=True)
class ServerSettings:
    """How `qwen-np serve` serves (its command-line options)."""
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch: int = 8
    context: int = 2048
    max_waiting: int = 64
    allowed_origins: tuple[str, ...] = ()
    log_level: str = "info"
    max_connections: int = 1024
    header_timeout: float = 10.0
    body_timeout: float = BODY_TIMEOUT_SECONDS
    shutdown_grace: float = 5.0     # on SIGTERM / Ctrl-C, open requests get this long
    prefix_cache_bytes: int = 128 << 20   # evicted prompt prefixes kept for reuse, at most
    prompt_lookup: int = 0          # drafted tokens a step for requests that do not say


def run_server(model, model_name: str, settings: ServerSettings = ServerSettings()) -> int:
    """Serve until SIGTERM or Ctrl-C (call from the main thread); the exit status: 128 + the
    signal's number (143 for SIGTERM, 130 for SIGINT) once every open request has ended.

    On the first signal the server takes no new connection or request (503), and the open
    ones get settings.shutdown_grace seconds to finish; then those left are cancelled, and
    each still ends well-formed: a stream with an error event and `data: [DONE]`, a plain
    request with OpenAI's error (503). A second signal cancels them at once. If the
    batcher's loop itself fails, every open request ends with a 500 and this raises.

    The HTTP server runs in a thread of its own, and the batcher's loop in this thread, the
    one that loaded the model: the kernels then run in one thread only (batch.Batcher.start
    says why that matters)."""
    import uvicorn
    model.tokenizer                                  # no tokenizer: a one-line error now
    batcher = Batcher(model, max_batch=settings.max_batch, context=settings.context,
                      prompt_lookup=settings.prompt_lookup,
                      max_waiting=settings.max_waiting,
                      prefix_cache_bytes=settings.prefix_cache_bytes)
    sock = listening_socket(settings.host, settings.port)
    limits = ConnectionLimits(connection_cap(settings.max_connections, raise_open_files_limit()),
                              settings.header_timeout)
    app = make_app(model, batcher, model_name, settings.api_key,
                   body_timeout=settings.body_timeout, allowed_origins=settings.allowed_origins,
                   loopback_only=is_loopback(settings.host))
    server = uvicorn.Server(uvicorn.Config(
        app, http=bounded_protocol(limits), backlog=ACCEPT_BATCH, lifespan="off",
        log_config=logging_config(settings.log_level), log_level=settings.log_level,
        access_log=False, timeout_graceful_shutdown=int(settings.shutdown_grace) + 10))
    signals = []

    def stop(sig, frame):
        signals.append(sig)
        batcher.drain()                 # new requests: 503
        server.should_exit = True       # no new connections; uvicorn waits for the open ones
        grace = settings.shutdown_grace if len(signals) == 1 else 0
        timer = threading.Timer(grace, batcher.close)   # then what is left is cancelled
        timer.daemon = True
        timer.start()

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
          f"{settings.max_batch} slots, context {settings.context}, at most "
          f"{limits.max_connections} connections)", file=sys.stderr, flush=True)
    try:
        try:
            batcher.run()
        except Exception as e:          # the loop's own defect: the requests have had a 500
            server.should_exit = True
            http.join(timeout=settings.shutdown_grace + 10)
            raise QwenNpError(f"the batcher's loop failed ({type(e).__name__}: {e}); the "
                              f"server has stopped") from e
        http.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if not signals:
        raise QwenNpError("the HTTP server stopped by itself (its log above says why)")
    sig = signals[0]
    print(f"qwen-np: stopped by {signal.Signals(sig).name}", file=sys.stderr, flush=True)
    return 128 + sig


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except (OSError, OverflowError) as e:
        reason = os.strerror(e.errno) if getattr(e, "errno", None) else str(e)
        raise QwenNpError(f"{host}:{port}: cannot listen there ({reason})") from None
