"""`qwen-np serve`: an OpenAI-compatible HTTP server over one model, with continuous batching.

Endpoints (OpenAI's request and response shapes):

    GET  /health                  {"status": "ok", "running": r, "waiting": w} (no key needed)
    GET  /v1/models               the one model, under the name it is served as
    POST /v1/completions          a prompt (text or token ids) -> its continuation
    POST /v1/chat/completions     messages -> the assistant's answer (the model's ChatML)

The flow of one request:

    HTTP body (at most max_body_bytes, counted as it is read)
      -> a Job: prompt ids (the chat prompt built by runtime/chat.py), max_tokens, stop strings, and
         the sampling settings as one Sampling value (model/sampling.py checks their ranges)
      -> Batcher.submit (runtime/batch.py; its loop runs in a thread of its own and joins the request
         to the running batch at its next turn)
      -> emit(token, finish), called in the batcher's thread, hands each item to the
         request's asyncio.Queue through loop.call_soon_threadsafe
      -> StopText: the text of the tokens so far (the tokenizer's decode of all of them),
         released as it becomes final: not while it ends in an unfinished UTF-8 character,
         nor a tail that could be the start of a stop string; a stop string ends the text
         before it and cancels the request in the batcher (its slot is freed)
      -> one JSON response, or server-sent events (`data: {json}` ... `data: [DONE]`)

The modules, in that order:

    api_key.py        the `Authorization: Bearer KEY` check
    json_body.py      the body, read within its size limit, as a JSON object
    job.py            the body's fields -> a Job (prompt ids, max_tokens, stops, Sampling)
    generation.py     the Job submitted to the batcher; its tokens back on an asyncio.Queue
    stop_text.py      StopText: the text released as it becomes final, and stop strings
    answer.py         OpenAI's response shapes: one JSON object, or server-sent events
    openai_errors.py  every refusal in OpenAI's error shape
    app.py            the Starlette routes over all of the above (make_app)
    __init__.py       run_server: the HTTP server and the batcher's loop, each in its thread
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

from qwen_np.apps.serve.app import make_app
from qwen_np.errors import QwenNpError
from qwen_np.runtime.batch import Batcher

SHUTDOWN_GRACE_SECONDS = 5         # on Ctrl-C / SIGTERM, open requests get this long to finish


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
