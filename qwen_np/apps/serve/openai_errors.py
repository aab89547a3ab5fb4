"""Every refusal in OpenAI's error shape.

Errors are OpenAI's `{"error": {"message", "type", "param", "code"}}`: 400 for a bad body or
parameter (and a prompt that does not fit the context), 401 for a missing or wrong key, 404,
405, 413 for a body over the limit, 500 if the model step failed, 503 with Retry-After when
every slot is taken and the waiting line is full.

ApiError is what the server's own code raises; the handlers below (make_app registers them)
turn it, Starlette's own refusals and qwen-np's errors into a response. Anything unexpected
is request_log.py's: a 500 that names only the request's id, and the cause in the log.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from qwen_np.errors import QwenNpError


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

