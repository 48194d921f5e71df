"""The fake server's Ollama dialect: /api/tags, /api/ps, /api/version, /api/chat, /api/generate,
/api/embed, /api/embeddings, /api/show.

Chat and generate stream NDJSON by default (``"stream": false`` asks for one object); the last line has
``done: true``, ``done_reason``, the token counts and the durations in nanoseconds. A generate without a
prompt (or a chat without messages) only "loads" the model and answers ``done_reason: "load"``, as Ollama
does. A generate with a ``suffix`` fills in the middle. ``logprobs: true`` (with ``top_logprobs``) gives
each content line its ``logprobs`` list (a whole answer: one entry per piece), in the shape Ollama
shares with OpenAI: ``{"token", "logprob", "bytes", "top_logprobs": [...]}``.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from tests.support.fake_http import (
    BEHAVIOUR,
    BODY,
    STATE,
    dumps,
    find_model,
    ollama_error,
    ollama_stream_error,
    write_stream,
)
from tests.support.fake_replies import (
    content_text,
    embedding_inputs,
    embedding_vector,
    infill_text,
    last_user_text,
    piece_logprobs,
    reply_text,
    split_chunks,
    word_count,
)

OLLAMA_VERSION = "0.6.8"
NDJSON_HEADERS = {"Content-Type": "application/x-ndjson"}
MODEL_SIZE_BYTES = 1_000_000
#: the context the models run with (/api/ps) and the one they were trained for (/api/show's model_info)
CONTEXT_LENGTH = 4096
TRAINED_CONTEXT_LENGTH = 32768
ARCHITECTURE = "llama"
#: a model whose name holds this is an embedding model (capabilities ["embedding"]), as nomic-embed-text is
EMBEDDING_MARK = "embed"
#: a chat template that renders tools: Ollama says "tools" for such a model
TOOLS_TEMPLATE = (
    "{{- if .Tools }}<tools>{{ range .Tools }}{{ . }}{{ end }}</tools>{{ end }}"
    "{{ range .Messages }}<|{{ .Role }}|>{{ .Content }}{{ end }}<|assistant|>"
)
#: how long /api/ps says a model stays loaded
KEEP_ALIVE = timedelta(minutes=5)
#: a fixed prompt evaluation time reported in the final line, in nanoseconds
PROMPT_EVAL_DURATION_NS = 1_000_000

routes = web.RouteTableDef()


def _timestamp(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).isoformat().replace("+00:00", "Z")


def _details() -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": ARCHITECTURE,
        "families": [ARCHITECTURE],
        "parameter_size": "1B",
        "quantization_level": "Q4_0",
    }


def _capabilities(model: str) -> list[str]:
    return ["embedding"] if EMBEDDING_MARK in model else ["completion", "tools"]


def _digest(model: str) -> str:
    return hashlib.sha256(model.encode()).hexdigest()


def ndjson_line(value: Any) -> bytes:
    return (dumps(value) + "\n").encode()


@routes.get("/api/version")
async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": OLLAMA_VERSION}, dumps=dumps)


@routes.get("/api/tags")
async def tags(request: web.Request) -> web.Response:
    modified = _timestamp()
    models = [
        {
            "name": model,
            "model": model,
            "modified_at": modified,
            "size": MODEL_SIZE_BYTES,
            "digest": _digest(model),
            "details": _details(),
        }
        for model in request.app[STATE].models
    ]
    return web.json_response({"models": models}, dumps=dumps)


@routes.get("/api/ps")
async def running_models(request: web.Request) -> web.Response:
    expires = _timestamp(datetime.now(UTC) + KEEP_ALIVE)
    models = [
        {
            "name": model,
            "model": model,
            "size": MODEL_SIZE_BYTES,
            "digest": _digest(model),
            "details": _details(),
            "expires_at": expires,
            "size_vram": MODEL_SIZE_BYTES,
            "context_length": CONTEXT_LENGTH,
        }
        for model in request.app[STATE].models
    ]
    return web.json_response({"models": models}, dumps=dumps)


class _BadRequest(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


def _parse(request: web.Request, *, model_key: str = "model") -> tuple[dict[str, Any], str]:
    behaviour = request[BEHAVIOUR]
    body = request[BODY]
    if not isinstance(body, dict):
        raise _BadRequest(ollama_error(400, "invalid JSON body", behaviour))
    model = body.get(model_key) or body.get("name")
    if not isinstance(model, str) or not model:
        raise _BadRequest(ollama_error(400, "model is required", behaviour))
    if find_model(request.app[STATE].models, model) is None:
        raise _BadRequest(ollama_error(404, f'model "{model}" not found, try pulling it first', behaviour))
    return body, model


@routes.post("/api/show")
async def show(request: web.Request) -> web.Response:
    try:
        _, model = _parse(request)
    except _BadRequest as bad:
        return bad.response
    embedding = EMBEDDING_MARK in model
    return web.json_response(
        {
            "license": "",
            "modelfile": f"# Modelfile of {model}\nFROM {model}\n",
            "parameters": "" if embedding else 'stop "<|user|>"\ntemperature 0.7',
            "template": "{{ .Prompt }}" if embedding else TOOLS_TEMPLATE,
            "details": _details(),
            "model_info": {
                "general.architecture": ARCHITECTURE,
                "general.parameter_count": 1_000_000_000,
                f"{ARCHITECTURE}.context_length": TRAINED_CONTEXT_LENGTH,
                f"{ARCHITECTURE}.embedding_length": request[BEHAVIOUR].dim,
            },
            "capabilities": _capabilities(model),
            "modified_at": _timestamp(),
        },
        dumps=dumps,
    )


def _pieces_and_finish(body: dict[str, Any], text: str, chunks: int) -> tuple[list[str], str]:
    pieces = split_chunks(text, chunks)
    options = body.get("options")
    limit = options.get("num_predict") if isinstance(options, dict) else None
    if isinstance(limit, int) and 0 < limit < len(pieces):
        return pieces[:limit], "length"
    return pieces, "stop"


def _logprobs(body: dict[str, Any], pieces: list[str]) -> dict[str, Any]:
    """``{"logprobs": [...]}`` for ``pieces`` when the body asks for them, else nothing."""
    if body.get("logprobs") is not True:
        return {}
    top = body.get("top_logprobs")
    return {"logprobs": [piece_logprobs(piece, top if isinstance(top, int) else 0) for piece in pieces]}


def _final_fields(done_reason: str, prompt_tokens: int, eval_count: int, started_ns: int) -> dict[str, Any]:
    total = max(time.perf_counter_ns() - started_ns, PROMPT_EVAL_DURATION_NS + 1)
    return {
        "done_reason": done_reason,
        "done": True,
        "total_duration": total,
        "load_duration": 0,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": PROMPT_EVAL_DURATION_NS,
        "eval_count": eval_count,
        "eval_duration": total - PROMPT_EVAL_DURATION_NS,
    }


def _streams(body: dict[str, Any]) -> bool:
    return body.get("stream", True) is not False


@routes.post("/api/chat")
async def chat(request: web.Request) -> web.StreamResponse:
    started_ns = time.perf_counter_ns()
    try:
        body, model = _parse(request)
    except _BadRequest as bad:
        return bad.response
    messages = body.get("messages")
    if messages is None or messages == []:
        return web.json_response(
            {
                "model": model,
                "created_at": _timestamp(),
                "message": {"role": "assistant", "content": ""},
                "done_reason": "load",
                "done": True,
            },
            dumps=dumps,
        )
    if not isinstance(messages, list):
        return ollama_error(400, "messages must be an array", request[BEHAVIOUR])
    prompt = last_user_text(messages)
    pieces, finish = _pieces_and_finish(body, reply_text(prompt), request[BEHAVIOUR].chunks)
    prompt_tokens = word_count(prompt)

    if not _streams(body):
        return web.json_response(
            {
                "model": model,
                "created_at": _timestamp(),
                "message": {"role": "assistant", "content": "".join(pieces)},
                **_logprobs(body, pieces),
                **_final_fields(finish, prompt_tokens, len(pieces), started_ns),
            },
            dumps=dumps,
        )

    def line(content: str) -> bytes:
        return ndjson_line(
            {
                "model": model,
                "created_at": _timestamp(),
                "message": {"role": "assistant", "content": content},
                **_logprobs(body, [content]),
                "done": False,
            }
        )

    def final() -> bytes:
        return ndjson_line(
            {
                "model": model,
                "created_at": _timestamp(),
                "message": {"role": "assistant", "content": ""},
                **_final_fields(finish, prompt_tokens, len(pieces), started_ns),
            }
        )

    return await write_stream(
        request,
        web.StreamResponse(headers=NDJSON_HEADERS),
        head=[],
        pieces=[line(piece) for piece in pieces],
        tail=[final],
        error=ollama_stream_error(),
    )


@routes.post("/api/generate")
async def generate(request: web.Request) -> web.StreamResponse:
    started_ns = time.perf_counter_ns()
    try:
        body, model = _parse(request)
    except _BadRequest as bad:
        return bad.response
    prompt = body.get("prompt")
    if not prompt:
        return web.json_response(
            {"model": model, "created_at": _timestamp(), "response": "", "done": True, "done_reason": "load"},
            dumps=dumps,
        )
    prompt = content_text(prompt)
    suffix = body.get("suffix")
    text = infill_text(prompt, suffix) if isinstance(suffix, str) and suffix else reply_text(prompt)
    pieces, finish = _pieces_and_finish(body, text, request[BEHAVIOUR].chunks)
    prompt_tokens = word_count(prompt)
    context = list(range(prompt_tokens + len(pieces)))

    if not _streams(body):
        return web.json_response(
            {
                "model": model,
                "created_at": _timestamp(),
                "response": "".join(pieces),
                **_logprobs(body, pieces),
                **_final_fields(finish, prompt_tokens, len(pieces), started_ns),
                "context": context,
            },
            dumps=dumps,
        )

    content_lines = [
        ndjson_line(
            {
                "model": model,
                "created_at": _timestamp(),
                "response": piece,
                **_logprobs(body, [piece]),
                "done": False,
            }
        )
        for piece in pieces
    ]

    def final() -> bytes:
        return ndjson_line(
            {
                "model": model,
                "created_at": _timestamp(),
                "response": "",
                **_final_fields(finish, prompt_tokens, len(pieces), started_ns),
                "context": context,
            }
        )

    return await write_stream(
        request,
        web.StreamResponse(headers=NDJSON_HEADERS),
        head=[],
        pieces=content_lines,
        tail=[final],
        error=ollama_stream_error(),
    )


@routes.post("/api/embed")
async def embed(request: web.Request) -> web.Response:
    started_ns = time.perf_counter_ns()
    try:
        body, model = _parse(request)
    except _BadRequest as bad:
        return bad.response
    behaviour = request[BEHAVIOUR]
    try:
        texts = embedding_inputs(body.get("input", ""))
    except ValueError as error:
        return ollama_error(400, str(error), behaviour)
    dimensions = body.get("dimensions")
    dim = dimensions if isinstance(dimensions, int) and dimensions > 0 else behaviour.dim
    return web.json_response(
        {
            "model": model,
            "embeddings": [embedding_vector(text, dim) for text in texts],
            "total_duration": time.perf_counter_ns() - started_ns,
            "load_duration": 0,
            "prompt_eval_count": sum(word_count(text) for text in texts),
        },
        dumps=dumps,
    )


@routes.post("/api/embeddings")
async def legacy_embeddings(request: web.Request) -> web.Response:
    try:
        body, _ = _parse(request)
    except _BadRequest as bad:
        return bad.response
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        return web.json_response({"embedding": []}, dumps=dumps)
    return web.json_response({"embedding": embedding_vector(prompt, request[BEHAVIOUR].dim)}, dumps=dumps)
