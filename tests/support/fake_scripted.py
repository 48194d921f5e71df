"""A scripted tool-calling model server for tests: a real HTTP server on 127.0.0.1 speaking exactly one
dialect (``openai``: /v1/chat/completions; ``ollama``: /api/chat; ``anthropic``: /v1/messages, see
tests.support.fake_anthropic), streaming and not.

What it answers follows a ``Script``: when the conversation's last message is a tool result, the final text
(``final_text``, then the tool result it read, so a test sees the result arrived); else, when the request
offers the tool ``tool_name``, one call of it with ``tool_arguments`` (streamed in ``pieces`` pieces of
JSON text); else ``reply_text``. ``thinking`` adds reasoning text first. Ids: OpenAI-kind calls are
``call_fake_N``, Anthropic-kind ``toolu_fake_N``; Ollama gives none, as Ollama does. Every request is
recorded (path, lower-case headers, parsed body) in ``requests``; ``fail_status`` answers the dialect's
error body instead.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

#: how long the server thread may take to start listening
START_TIMEOUT_SECONDS = 10.0


@dataclass
class Script:
    tool_name: str | None = None
    tool_arguments: dict[str, Any] = field(default_factory=dict)
    final_text: str = "all done"
    reply_text: str = "hello from the fake"
    thinking: str | None = None
    #: pieces the streamed text and tool-call arguments are cut into
    pieces: int = 3
    fail_status: int | None = None
    fail_message: str = "scripted failure"
    #: tokens reported: prompt, completion
    usage: tuple[int, int] = (11, 7)


@dataclass
class Reply:
    """What the script says to answer: text, or a tool call (``tool`` set), with optional thinking."""

    text: str = ""
    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    thinking: str | None = None


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class ScriptedState:
    kind: str
    models: tuple[str, ...]
    script: Script
    requests: list[Recorded] = field(default_factory=list)
    calls: int = 0

    def reply(self, *, tool_result: str | None, offered: list[str]) -> Reply:
        script = self.script
        if tool_result is not None:
            return Reply(text=f"{script.final_text}: {tool_result}", thinking=script.thinking)
        if script.tool_name is not None and script.tool_name in offered:
            return Reply(tool=script.tool_name, arguments=script.tool_arguments, thinking=script.thinking)
        return Reply(text=script.reply_text, thinking=script.thinking)

    def next_call_id(self, prefix: str) -> str:
        self.calls += 1
        return f"{prefix}{self.calls}"


STATE = web.AppKey("scripted_state", ScriptedState)


def pieces(text: str, count: int) -> list[str]:
    """``text`` cut into ``count`` pieces (fewer when it is shorter), which join back to it."""
    if not text:
        return []
    size = max(1, -(-len(text) // max(count, 1)))
    return [text[i : i + size] for i in range(0, len(text), size)]


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def record(request: web.Request) -> Any:
    body = await request.json()
    headers = {name.lower(): value for name, value in request.headers.items()}
    request.app[STATE].requests.append(Recorded(request.path, headers, body))
    return body


# --- OpenAI chat completions -------------------------------------------------------------------------------

openai_routes = web.RouteTableDef()


@openai_routes.get("/v1/models")
async def openai_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in state.models]
    return web.json_response({"object": "list", "data": data})


@openai_routes.post("/v1/chat/completions")
async def openai_chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await record(request)
    script = state.script
    if script.fail_status is not None:
        error = {"message": script.fail_message, "type": "invalid_request_error", "param": None, "code": None}
        return web.json_response({"error": error}, status=script.fail_status)
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    tool_result = str(last.get("content")) if last.get("role") == "tool" else None
    offered = [tool["function"]["name"] for tool in body.get("tools") or ()]
    reply = state.reply(tool_result=tool_result, offered=offered)
    call_id = state.next_call_id("call_fake_") if reply.tool else None
    arguments = dumps(reply.arguments)
    prompt, completion = script.usage
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    reason = "tool_calls" if reply.tool else "stop"
    base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body["model"]}
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.thinking:
            message["reasoning_content"] = reply.thinking
        if reply.tool:
            function = {"name": reply.tool, "arguments": arguments}
            message["tool_calls"] = [{"id": call_id, "type": "function", "function": function}]
        choice = {"index": 0, "message": message, "finish_reason": reason}
        return web.json_response({**base, "object": "chat.completion", "choices": [choice], "usage": usage})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)

    async def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish}] if delta or finish else []
        payload = {**base, "object": "chat.completion.chunk", "choices": choices, **extra}
        await response.write(f"data: {dumps(payload)}\n\n".encode())

    await chunk({"role": "assistant", "content": ""})
    if reply.thinking:
        for piece in pieces(reply.thinking, script.pieces):
            await chunk({"reasoning_content": piece})
    for piece in pieces(reply.text, script.pieces):
        await chunk({"content": piece})
    if reply.tool:
        start = {
            "index": 0,
            "id": call_id,
            "type": "function",
            "function": {"name": reply.tool, "arguments": ""},
        }
        await chunk({"tool_calls": [start]})
        for piece in pieces(arguments, script.pieces):
            await chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    await chunk({}, reason)
    if (body.get("stream_options") or {}).get("include_usage"):
        await chunk({}, None, usage=usage)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


# --- Ollama /api/chat ---------------------------------------------------------------------------------

ollama_routes = web.RouteTableDef()


@ollama_routes.get("/api/tags")
async def ollama_tags(request: web.Request) -> web.Response:
    return web.json_response({"models": [{"name": m, "model": m} for m in request.app[STATE].models]})


@ollama_routes.get("/api/version")
async def ollama_version(request: web.Request) -> web.Response:
    return web.json_response({"version": "0.12.0"})


@ollama_routes.post("/api/chat")
async def ollama_chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await record(request)
    script = state.script
    if script.fail_status is not None:
        return web.json_response({"error": script.fail_message}, status=script.fail_status)
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    tool_result = str(last.get("content")) if last.get("role") == "tool" else None
    offered = [tool["function"]["name"] for tool in body.get("tools") or ()]
    reply = state.reply(tool_result=tool_result, offered=offered)
    prompt, completion = script.usage
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    calls = [{"function": {"name": reply.tool, "arguments": reply.arguments}}] if reply.tool else None
    done = {
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": prompt,
        "eval_count": completion,
        "total_duration": 1,
    }
    if body.get("stream") is False:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        if reply.thinking:
            message["thinking"] = reply.thinking
        if calls:
            message["tool_calls"] = calls
        return web.json_response({"model": body["model"], "created_at": created, "message": message, **done})
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)

    async def line(message: dict[str, Any], **extra: Any) -> None:
        payload = {"model": body["model"], "created_at": created, "message": message, "done": False, **extra}
        await response.write(f"{dumps(payload)}\n".encode())

    if reply.thinking:
        for piece in pieces(reply.thinking, script.pieces):
            await line({"role": "assistant", "content": "", "thinking": piece})
    for piece in pieces(reply.text, script.pieces):
        await line({"role": "assistant", "content": piece})
    if calls:  # Ollama sends a call whole, in one line
        await line({"role": "assistant", "content": "", "tool_calls": calls})
    await line({"role": "assistant", "content": ""}, **done)
    await response.write_eof()
    return response


# --- running it ------------------------------------------------------------------------------------


@dataclass
class ScriptedBackend:
    url: str
    state: ScriptedState

    @property
    def requests(self) -> list[Recorded]:
        return self.state.requests

    def bodies(self, path: str) -> list[Any]:
        return [r.body for r in list(self.state.requests) if r.path == path]


def _routes(kind: str) -> web.RouteTableDef:
    if kind == "openai":
        return openai_routes
    if kind == "ollama":
        return ollama_routes
    from tests.support.fake_anthropic import routes

    return routes


@contextmanager
def running_scripted_backend(
    kind: str, *, models: tuple[str, ...] = ("fake-model",), script: Script | None = None
) -> Iterator[ScriptedBackend]:
    """Serve a scripted backend of ``kind`` (openai, ollama or anthropic) on its own thread until the block
    exits; ``script`` may be changed in place between requests."""
    state = ScriptedState(kind=kind, models=models, script=script or Script())
    started: Future[tuple[asyncio.AbstractEventLoop, int]] = Future()
    stop: asyncio.Event | None = None

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        app = web.Application()
        app[STATE] = state
        app.add_routes(_routes(kind))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        started.set_result((asyncio.get_running_loop(), runner.addresses[0][1]))
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    def thread_main() -> None:
        try:
            asyncio.run(main())
        except BaseException as error:  # pragma: no cover - reported to the waiting test
            if not started.done():
                started.set_exception(error)

    thread = threading.Thread(target=thread_main, name=f"scripted-{kind}", daemon=True)
    thread.start()
    loop, port = started.result(timeout=START_TIMEOUT_SECONDS)
    try:
        yield ScriptedBackend(f"http://127.0.0.1:{port}", state)
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=START_TIMEOUT_SECONDS)
