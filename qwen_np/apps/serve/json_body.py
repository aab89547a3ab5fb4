"""The request body, read within its size limit and its time limit, as a JSON object."""

from __future__ import annotations

import asyncio
import json

from starlette.requests import ClientDisconnect, Request

from qwen_np.apps.serve.openai_errors import ApiError

MAX_BODY_BYTES = 1 << 20           # a larger request body is refused (413) before it is parsed
BODY_TIMEOUT_SECONDS = 30.0        # a body that takes longer to arrive is refused (408)


async def read_json_body(http_request: Request, max_bytes: int,
                         timeout: float = BODY_TIMEOUT_SECONDS) -> dict:
    """The body as a JSON object. A body over max_bytes is refused unparsed (413): at once if
    its Content-Length says so, else as soon as the bytes read pass the limit (a chunked body
    has no Content-Length). A body still arriving `timeout` seconds after the request's head
    is refused (408), however steadily its bytes trickle in."""
    declared = http_request.headers.get("content-length", "")   # (uvicorn checks its form)
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise body_too_large(max_bytes)
    try:
        body = await asyncio.wait_for(read_body_bytes(http_request, max_bytes), timeout)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body took longer than {timeout:g} s to arrive",
                       code="request_timeout") from None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as e:     # UnicodeDecodeError is a ValueError
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:          # JSON may write half of a UTF-16 pair ("\\ud800"), which is no text at all
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(400, f"the body holds a lone UTF-16 surrogate "
                            f"({e.object[e.start:e.end]!r}); strings must be Unicode text") \
            from None
    return value


async def read_body_bytes(http_request: Request, max_bytes: int) -> bytearray:
    body = bytearray()
    try:
        async for chunk in http_request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise body_too_large(max_bytes)
    except ClientDisconnect:
        raise ApiError(400, "the request body ended early") from None
    return body


def body_too_large(max_bytes: int) -> ApiError:
    return ApiError(413, f"the request body is larger than {max_bytes} bytes",
                    code="request_too_large")
