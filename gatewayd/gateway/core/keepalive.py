"""Keep-alive events for a stream that waits for its backend to start: they reach the client as nothing at
all (an SSE comment) or as an empty message (Ollama's NDJSON), so its read timeout does not fire while a
model server loads. Pure."""

from __future__ import annotations

from gatewayd.gateway.core.dialects import Api
from gatewayd.gateway.core.framing import encode_ndjson, encode_sse_comment
from gatewayd.gateway.core.translate_base import now_seconds, rfc3339


def keepalive_event(api: Api, model: str, backend: str) -> bytes:
    """One keep-alive event in ``api``'s framing, for a stream of ``model`` waiting for ``backend``."""
    if api.framing.is_sse:
        return encode_sse_comment(f"gatewayd: starting backend {backend}")
    created_at = rfc3339(now_seconds())
    if api is Api.OLLAMA_CHAT:
        message = {"role": "assistant", "content": ""}
        return encode_ndjson({"model": model, "created_at": created_at, "message": message, "done": False})
    return encode_ndjson({"model": model, "created_at": created_at, "response": "", "done": False})
