"""The API key: with one set, every /v1 request must carry `Authorization: Bearer KEY`."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from qwen_np.apps.serve.openai_errors import ApiError


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
