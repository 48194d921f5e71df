"""The scripted fake's Anthropic dialect: /v1/models, /v1/messages (streaming and not),
/v1/messages/count_tokens. Only Anthropic's wire format: it requires ``anthropic-version`` and a key in
``x-api-key`` when the fake is given one, answers errors as ``{"type": "error", "error": {...}}``, and
streams named events in Anthropic's order (message_start, ping, content_block_start/delta/stop per block,
message_delta, message_stop). What it says follows the ``Script`` (tests.support.fake_scripted)."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from tests.support.fake_scripted import STATE, dumps, pieces, record

routes = web.RouteTableDef()

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}


def anthropic_error(status: int, message: str) -> web.Response:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if status == 529:
        kind = "overloaded_error"
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status)


def _check(request: web.Request) -> web.Response | None:
    if "anthropic-version" not in request.headers:
        return anthropic_error(400, "anthropic-version: header is required")
    return None


@routes.get("/v1/models")
async def models(request: web.Request) -> web.Response:
    data = [
        {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
        for m in request.app[STATE].models
    ]
    return web.json_response({"data": data, "has_more": False, "first_id": None, "last_id": None})


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content or () if isinstance(block, dict))


@routes.post("/v1/messages/count_tokens")
async def count_tokens(request: web.Request) -> web.Response:
    refused = _check(request)
    if refused is not None:
        return refused
    body = await record(request)
    text = _text_of(body.get("system")) + "".join(_text_of(m.get("content")) for m in body["messages"])
    return web.json_response({"input_tokens": 1000 + math.ceil(len(text) / 3)})  # recognisably not ours


@routes.post("/v1/messages")
async def messages(request: web.Request) -> web.StreamResponse:
    refused = _check(request)
    if refused is not None:
        return refused
    state = request.app[STATE]
    body = await record(request)
    script = state.script
    if script.fail_status is not None:
        return anthropic_error(script.fail_status, script.fail_message)
    if not isinstance(body.get("max_tokens"), int):
        return anthropic_error(400, "max_tokens: Field required")
    last = body["messages"][-1] if body.get("messages") else {}
    results = [
        block
        for block in (last.get("content") if isinstance(last.get("content"), list) else ())
        if block.get("type") == "tool_result"
    ]
    tool_result = _text_of(results[0].get("content")) if results else None
    offered = [tool["name"] for tool in body.get("tools") or ()]
    reply = state.reply(tool_result=tool_result, offered=offered)
    prompt, completion = script.usage
    blocks: list[dict[str, Any]] = []
    if reply.thinking:
        blocks.append({"type": "thinking", "thinking": reply.thinking, "signature": "sig-fake"})
    if reply.text:
        blocks.append({"type": "text", "text": reply.text})
    if reply.tool:
        call_id = state.next_call_id("toolu_fake_")
        blocks.append({"type": "tool_use", "id": call_id, "name": reply.tool, "input": reply.arguments})
    stop = "tool_use" if reply.tool else "end_turn"
    message = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "stop_sequence": None,
    }
    if not body.get("stream"):
        usage = {"input_tokens": prompt, "output_tokens": completion}
        return web.json_response({**message, "content": blocks, "stop_reason": stop, "usage": usage})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)

    async def event(payload: dict[str, Any]) -> None:
        await response.write(f"event: {payload['type']}\ndata: {dumps(payload)}\n\n".encode())

    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": prompt, "output_tokens": 1},
    }
    await event({"type": "message_start", "message": start})
    await event({"type": "ping"})
    for index, block in enumerate(blocks):
        kind = block["type"]
        if kind == "thinking":
            opened: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [
                {"type": "thinking_delta", "thinking": p} for p in pieces(block["thinking"], script.pieces)
            ]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        elif kind == "text":
            opened = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in pieces(block["text"], script.pieces)]
        else:
            opened = {**block, "input": {}}
            text = dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces(text, script.pieces)]
        await event({"type": "content_block_start", "index": index, "content_block": opened})
        for delta in deltas:
            await event({"type": "content_block_delta", "index": index, "delta": delta})
        await event({"type": "content_block_stop", "index": index})
    delta = {"stop_reason": stop, "stop_sequence": None}
    await event({"type": "message_delta", "delta": delta, "usage": {"output_tokens": completion}})
    await event({"type": "message_stop"})
    await response.write_eof()
    return response
