"""Request ids, the access log, and the server's logging (through uvicorn's own).

Every request gets an id: the `X-Request-Id` header of its response, the hex part of its
completion's `id`, the id a 500's message names, and the id in its access-log line:

    INFO:     127.0.0.1:51234 "POST /v1/completions" 200 0.412s id=3f2a...

The line is written once the response has been sent (never per token). Logging goes through
uvicorn's own configuration (its handlers and formatters, at --log-level), with one more
filter: a message repeated within REPEAT_WINDOW seconds is written at most REPEAT_LINES
times there, and the next line written says how many were left out, so that no client (a
storm of connections, one warning a request) can fill the log; the access log is left whole.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import uuid

from qwen_np.apps.serve.openai_errors import error_body

ACCESS_LOGGER = "qwen_np.access"
SERVER_LOGGER = "qwen_np.serve"
REPEAT_WINDOW = 10.0               # seconds
REPEAT_LINES = 5                   # lines of one message per window


class RequestLog:
    """ASGI middleware: a request id in scope["state"] and in the response's headers, one
    access-log line per request, and for an exception nothing else caught, a 500 that names
    only the id (the traceback goes to the log)."""

    def __init__(self, app, count=None):
        self.app = app
        self.log = logging.getLogger(ACCESS_LOGGER)
        self.count = count            # count(path, status) once each response has been sent

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        started, status = time.monotonic(), [None]
        scope.setdefault("state", {}).update(request_id=request_id, started=started)

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:     # noqa: BLE001 (the client learns the id; the log, the cause)
            logging.getLogger(SERVER_LOGGER).exception("request %s failed", request_id)
            if status[0] is None:
                body = json.dumps(error_body(500, f"internal error (request id {request_id}; "
                                                  f"the server's log has the cause)")).encode()
                await send_with_id({"type": "http.response.start", "status": 500, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())]})
                await send_with_id({"type": "http.response.body", "body": body})
        finally:
            if self.count is not None:
                self.count(scope["path"], status[0] or 0)
            if self.log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("-", 0)
                self.log.info('%s:%s "%s %s" %s %.3fs id=%s', client[0], client[1],
                              scope["method"], scope["path"], status[0] or "-",
                              time.monotonic() - started, request_id)


class RepeatFilter(logging.Filter):
    """At most REPEAT_LINES records of one message (its format string) per REPEAT_WINDOW
    seconds; the next one let through says how many were left out."""

    def __init__(self):
        super().__init__()
        self.seen: dict[tuple, list] = {}     # (logger, msg) -> [window start, count, left out]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        window = self.seen.get(key)
        if window is None or now - window[0] > REPEAT_WINDOW:
            left_out = window[2] if window else 0
            self.seen[key] = [now, 1, 0]
            if len(self.seen) > 1000:                     # forget the oldest messages
                for old in sorted(self.seen, key=lambda k: self.seen[k][0])[:500]:
                    del self.seen[old]
            if left_out:
                record.msg = f"{record.msg} ({left_out} more like this left out)"
            return True
        window[1] += 1
        if window[1] > REPEAT_LINES:
            window[2] += 1
            return False
        return True


def logging_config(level: str) -> dict:
    """uvicorn's logging configuration, with qwen-np's loggers on its handlers, asyncio's
    errors on them too, and RepeatFilter on every handler but the access log's (one line per
    request answered: its length follows the requests, which the server bounds)."""
    from uvicorn.config import LOGGING_CONFIG
    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"repeats": {"()": RepeatFilter}}
    for handler in config["handlers"].values():
        handler["filters"] = ["repeats"]
    config["formatters"]["qwen_np"] = {"()": "uvicorn.logging.DefaultFormatter",
                                       "fmt": "%(levelprefix)s %(message)s",
                                       "use_colors": False}
    config["handlers"]["qwen_np"] = {"formatter": "qwen_np", "class": "logging.StreamHandler",
                                     "stream": "ext://sys.stderr", "filters": ["repeats"]}
    config["handlers"]["qwen_np_access"] = {"formatter": "qwen_np",
                                            "class": "logging.StreamHandler",
                                            "stream": "ext://sys.stderr"}
    for name, handler in ((ACCESS_LOGGER, "qwen_np_access"), (SERVER_LOGGER, "qwen_np"),
                          ("asyncio", "qwen_np")):
        config["loggers"][name] = {"handlers": [handler], "level": level.upper(),
                                   "propagate": False}
    return config
