"""``POST /v1/messages/count_tokens``: the prompt's token count, from the backend where it can count.

A backend of ``kind: anthropic`` is asked its own ``/v1/messages/count_tokens``; a llama-server renders the
messages with its chat template (``/apply-template``) and counts them (``/tokenize``). Every other backend
(and one of these that fails to answer) gets the estimate of ``dialects.anthropic.estimate_tokens``. The
answer's ``X-Gatewayd-Token-Count`` header says which: ``backend`` or ``estimate``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from gatewayd.config import Backend, BackendKind
from gatewayd.errors import BackendError, BadGateway
from gatewayd.gateway.backends.kinds import auth_headers
from gatewayd.gateway.backends.probes import api_url
from gatewayd.gateway.backends.transport import Transport
from gatewayd.gateway.core.jsontext import dumps
from gatewayd.gateway.dialects.anthropic import decode_messages_body, estimate_tokens
from gatewayd.gateway.dialects.openai_chat import ChatBackend

log = logging.getLogger("gatewayd.relay")

BACKEND = "backend"
ESTIMATE = "estimate"


async def count_tokens(
    transport: Transport, backend: Backend, model: str, body: dict[str, Any]
) -> tuple[int, str]:
    """(tokens, ``BACKEND`` or ``ESTIMATE``) for the Messages request ``body`` on ``backend``'s
    ``model``. Raises BadRequest for a body that is not a Messages request."""
    request = decode_messages_body(body, max_tokens=None)
    try:
        if backend.kind is BackendKind.ANTHROPIC:
            answer = await _post(transport, backend, "/v1/messages/count_tokens", {**body, "model": model})
            return _count(answer.get("input_tokens")), BACKEND
        if backend.kind is BackendKind.LLAMA_SERVER:
            messages = ChatBackend().encode_request(request, model=model)["messages"]
            prompt = (await _post(transport, backend, "/apply-template", {"messages": messages})).get(
                "prompt"
            )
            if not isinstance(prompt, str):
                raise BadGateway("/apply-template gave no prompt", backend=backend.id)
            tokens = (await _post(transport, backend, "/tokenize", {"content": prompt})).get("tokens")
            if not isinstance(tokens, list):
                raise BadGateway("/tokenize gave no tokens", backend=backend.id)
            return len(tokens), BACKEND
    except BackendError as error:
        log.info("backend %s cannot count tokens (%s): estimating", backend.id, error.message)
    return estimate_tokens(request), ESTIMATE


def _count(value: object) -> int:
    if type(value) is not int:
        raise BadGateway("count_tokens answered without input_tokens")
    return value


async def _post(transport: Transport, backend: Backend, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await transport.open(
        "POST",
        api_url(backend, path),
        backend=backend.id,
        timeouts=backend.timeouts,
        headers={"Content-Type": "application/json", **auth_headers(backend)},
        body=dumps(body).encode(),
    )
    try:
        raw = await response.read()
    finally:
        response.close()
    if response.status != 200:
        raise BadGateway(f"{path} answered HTTP {response.status}", backend=backend.id)
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise BadGateway(f"{path} answered a body that is not JSON", backend=backend.id) from None
    if not isinstance(parsed, dict):
        raise BadGateway(f"{path} answered an unexpected body", backend=backend.id)
    return parsed
