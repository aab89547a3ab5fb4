"""The request body, read within its size limit, as a JSON object."""

from __future__ import annotations

import json

from starlette.requests import ClientDisconnect, Request

from qwen_np.apps.serve.openai_errors import ApiError

MAX_BODY_BYTES = 1 << 20           # a larger request body is refused (413) before it is parsed


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
