"""The fake server's OpenAI dialect: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings.

Shapes follow the OpenAI API as its official client parses them: SSE streams of ``chat.completion.chunk`` /
``text_completion`` objects (a role chunk first, one chunk per piece, a finish chunk, an optional usage
chunk with empty ``choices`` when ``stream_options.include_usage`` is true, then ``data: [DONE]``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.support.fake_http import (
    BEHAVIOUR,
    BODY,
    STATE,
    Kind,
    dumps,
    find_model,
    new_id,
    openai_error,
    openai_stream_error,
    unix_now,
    write_stream,
)
from tests.support.fake_replies import (
    embedding_inputs,
    embedding_vector,
    encode_base64_float32,
    last_user_text,
    prompt_text,
    reply_text,
    split_chunks,
    word_count,
)

SYSTEM_FINGERPRINT = "fp_fake"
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
DONE_FRAME = b"data: [DONE]\n\n"

_OWNED_BY = {
    Kind.OPENAI: "openai",
    Kind.OLLAMA: "library",
    Kind.LLAMA_SERVER: "llamacpp",
    Kind.VLLM: "vllm",
}

routes = web.RouteTableDef()


def sse_frame(value: Any) -> bytes:
    return f"data: {dumps(value)}\n\n".encode()


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    created = unix_now()
    data = [
        {"id": model, "object": "model", "created": created, "owned_by": _OWNED_BY[state.kind]}
        for model in state.models
    ]
    return web.json_response({"object": "list", "data": data}, dumps=dumps)


class _BadRequest(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


def _parse(request: web.Request) -> tuple[dict[str, Any], str]:
    """The JSON object body and the model it names; raises _BadRequest with the OpenAI error to send."""
    behaviour = request[BEHAVIOUR]
    body = request[BODY]
    if not isinstance(body, dict):
        raise _BadRequest(openai_error(400, "We could not parse the JSON body of your request.", behaviour))
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest(openai_error(400, "you must provide a model parameter", behaviour, param="model"))
    if find_model(request.app[STATE].models, model) is None:
        raise _BadRequest(
            openai_error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                behaviour,
                code="model_not_found",
            )
        )
    return body, model


def _pieces_and_finish(body: dict[str, Any], text: str, chunks: int) -> tuple[list[str], str]:
    pieces = split_chunks(text, chunks)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(limit, int) and 0 < limit < len(pieces):
        return pieces[:limit], "length"
    return pieces, "stop"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    try:
        body, model = _parse(request)
    except _BadRequest as bad:
        return bad.response
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return openai_error(400, "'messages' must be a non-empty array", request[BEHAVIOUR], param="messages")
    prompt = last_user_text(messages)
    pieces, finish = _pieces_and_finish(body, reply_text(prompt), request[BEHAVIOUR].chunks)
    usage = _usage(word_count(prompt), len(pieces))
    completion_id, created = new_id("chatcmpl"), unix_now()

    if body.get("stream") is not True:
        return web.json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(pieces), "refusal": None},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            },
            dumps=dumps,
        )

    include_usage = _include_usage(body)

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
        value: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if include_usage:
            value["usage"] = None
        return sse_frame(value)

    tail = [chunk({}, finish)]
    if include_usage:
        tail.append(
            sse_frame(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": SYSTEM_FINGERPRINT,
                    "choices": [],
                    "usage": usage,
                }
            )
        )
    tail.append(DONE_FRAME)
    return await write_stream(
        request,
        web.StreamResponse(headers=SSE_HEADERS),
        head=[chunk({"role": "assistant", "content": ""}, None)],
        pieces=[chunk({"content": piece}, None) for piece in pieces],
        tail=tail,
        error=openai_stream_error(),
    )


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    try:
        body, model = _parse(request)
    except _BadRequest as bad:
        return bad.response
    if "prompt" not in body:
        return openai_error(400, "'prompt' is a required property", request[BEHAVIOUR], param="prompt")
    prompt = prompt_text(body["prompt"])
    pieces, finish = _pieces_and_finish(body, reply_text(prompt), request[BEHAVIOUR].chunks)
    usage = _usage(word_count(prompt), len(pieces))
    completion_id, created = new_id("cmpl"), unix_now()

    def completion(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
            **extra,
        }

    def choice(text: str, finish_reason: str | None) -> dict[str, Any]:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}

    if body.get("stream") is not True:
        return web.json_response(completion([choice("".join(pieces), finish)], usage=usage), dumps=dumps)

    include_usage = _include_usage(body)
    usage_field: dict[str, Any] = {"usage": None} if include_usage else {}
    tail = [sse_frame(completion([choice("", finish)], **usage_field))]
    if include_usage:
        tail.append(sse_frame(completion([], usage=usage)))
    tail.append(DONE_FRAME)
    return await write_stream(
        request,
        web.StreamResponse(headers=SSE_HEADERS),
        head=[],
        pieces=[sse_frame(completion([choice(piece, None)], **usage_field)) for piece in pieces],
        tail=tail,
        error=openai_stream_error(),
    )


@routes.post("/v1/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    try:
        body, model = _parse(request)
    except _BadRequest as bad:
        return bad.response
    behaviour = request[BEHAVIOUR]
    try:
        texts = embedding_inputs(body.get("input"))
    except ValueError as error:
        return openai_error(400, str(error), behaviour, param="input")
    dimensions = body.get("dimensions")
    dim = dimensions if isinstance(dimensions, int) and dimensions > 0 else behaviour.dim
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(texts):
        vector = embedding_vector(text, dim)
        encoded: Any = encode_base64_float32(vector) if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    prompt_tokens = sum(word_count(text) for text in texts)
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        },
        dumps=dumps,
    )
