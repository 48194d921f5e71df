"""The fake server's OpenAI dialect: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings,
and llama-server's native /infill.

Shapes follow the OpenAI API as its official client parses them: SSE streams of ``chat.completion.chunk`` /
``text_completion`` objects (a role chunk first, one chunk per piece, a finish chunk, an optional usage
chunk with empty ``choices`` when ``stream_options.include_usage`` is true, then ``data: [DONE]``).
``logprobs: true`` (with ``top_logprobs``) gives each piece its ``choices[].logprobs.content`` entry.

Where the real servers differ, the fake's kind does too: ``openai`` refuses sampling fields OpenAI does
not have (``top_k``, ``min_p``, ...: "Unrecognized request argument supplied") and, for its reasoning
models (o1, o3, o4, gpt-5...), ``max_tokens`` ("Use 'max_completion_tokens' instead"); a completion's
``suffix`` is filled in by ``openai``, refused by ``vllm`` ("suffix is not currently supported") and
ignored by ``llama-server``, whose /infill (``input_prefix``, ``input_suffix``, ``n_predict``; SSE
without ``[DONE]`` when streamed) fills in the middle instead.
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
    infill_text,
    last_user_text,
    piece_logprobs,
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

#: OpenAI's reasoning models, which refuse ``max_tokens``
REASONING_MODEL_PREFIXES = ("o1", "o3", "o4", "gpt-5")
#: sampling fields llama-server and vLLM take in an OpenAI body, which OpenAI itself refuses
NOT_OPENAI_FIELDS = (
    "top_k",
    "min_p",
    "repeat_penalty",
    "repetition_penalty",
    "typical_p",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "repeat_last_n",
)

routes = web.RouteTableDef()


def sse_frame(value: Any) -> bytes:
    return f"data: {dumps(value)}\n\n".encode()


#: what vLLM's max_model_len and llama-server's n_ctx_train say (the model's trained context)
TRAINED_CONTEXT_LENGTH = 32768
PARAMETER_COUNT = 1_234_567_890
MODEL_SIZE_BYTES = 987_654_321


def _model_entry(kind: Kind, model: str, created: int) -> dict[str, Any]:
    """A /v1/models entry as each server writes it: OpenAI's four fields; vLLM adds root, parent,
    max_model_len and permission; llama-server adds ``meta`` (its GGUF's figures)."""
    entry: dict[str, Any] = {"id": model, "object": "model", "created": created, "owned_by": _OWNED_BY[kind]}
    if kind is Kind.VLLM:
        entry.update(
            root=model,
            parent=None,
            max_model_len=TRAINED_CONTEXT_LENGTH,
            permission=[{"id": f"modelperm-{model}", "object": "model_permission", "allow_sampling": True}],
        )
    elif kind is Kind.LLAMA_SERVER:
        entry["meta"] = {
            "vocab_type": 2,
            "n_vocab": 151936,
            "n_ctx_train": TRAINED_CONTEXT_LENGTH,
            "n_embd": 1024,
            "n_params": PARAMETER_COUNT,
            "size": MODEL_SIZE_BYTES,
        }
    return entry


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    created = unix_now()
    data = [_model_entry(state.kind, model, created) for model in state.models]
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


def _refused_by_openai(
    request: web.Request, body: dict[str, Any], model: str, *, chat: bool
) -> web.Response | None:
    """OpenAI's 400 for a body it would refuse, on the ``openai`` kind only; None otherwise."""
    if request.app[STATE].kind is not Kind.OPENAI:
        return None
    behaviour = request[BEHAVIOUR]
    for name in NOT_OPENAI_FIELDS:
        if name in body:
            return openai_error(400, f"Unrecognized request argument supplied: {name}", behaviour)
    if chat and "max_tokens" in body and model.startswith(REASONING_MODEL_PREFIXES):
        message = (
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead."
        )
        return openai_error(400, message, behaviour, param="max_tokens", code="unsupported_parameter")
    return None


def _logprobs(body: dict[str, Any], pieces: list[str]) -> dict[str, Any] | None:
    """``choices[].logprobs`` for ``pieces`` when the body asks for logprobs."""
    if body.get("logprobs") is not True:
        return None
    top = body.get("top_logprobs")
    return {"content": [piece_logprobs(piece, top if isinstance(top, int) else 0) for piece in pieces]}


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
    refused = _refused_by_openai(request, body, model, chat=True)
    if refused is not None:
        return refused
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
                        "logprobs": _logprobs(body, pieces),
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            },
            dumps=dumps,
        )

    include_usage = _include_usage(body)

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
        content = delta.get("content")
        logprobs = _logprobs(body, [content]) if content else None
        value: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
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
    refused = _refused_by_openai(request, body, model, chat=False)
    if refused is not None:
        return refused
    prompt = prompt_text(body["prompt"])
    text = reply_text(prompt)
    suffix = body.get("suffix")
    if isinstance(suffix, str) and suffix:
        kind = request.app[STATE].kind
        if kind is Kind.VLLM:
            return openai_error(400, "suffix is not currently supported", request[BEHAVIOUR])
        if kind is Kind.OPENAI:
            text = infill_text(prompt, suffix)
    pieces, finish = _pieces_and_finish(body, text, request[BEHAVIOUR].chunks)
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


@routes.post("/infill")
async def infill(request: web.Request) -> web.StreamResponse:
    """llama-server's fill-in-the-middle: a /completion-shaped answer (``content``, ``stop``,
    ``stop_type``, ``tokens_predicted``, ``tokens_evaluated``), streamed as SSE without ``[DONE]``."""
    state = request.app[STATE]
    behaviour = request[BEHAVIOUR]
    if state.kind is not Kind.LLAMA_SERVER:
        return web.Response(status=404, text="404 Not Found")
    body = request[BODY]
    if not isinstance(body, dict) or not isinstance(body.get("input_prefix"), str):
        return openai_error(400, '"input_prefix" is required', behaviour)
    prefix, suffix = body["input_prefix"], body.get("input_suffix") or ""
    pieces = split_chunks(infill_text(prefix, suffix), behaviour.chunks)
    limit = body.get("n_predict")
    stop_type = "eos"
    if isinstance(limit, int) and 0 < limit < len(pieces):
        pieces, stop_type = pieces[:limit], "limit"
    counts = {"tokens_predicted": len(pieces), "tokens_evaluated": word_count(prefix) + word_count(suffix)}
    last = {"model": state.models[0], "stop_type": stop_type, "stopping_word": "", **counts}
    if body.get("stream") is not True:
        whole = {"index": 0, "content": "".join(pieces), "id_slot": 0, "stop": True, **last}
        return web.json_response(whole, dumps=dumps)
    return await write_stream(
        request,
        web.StreamResponse(headers=SSE_HEADERS),
        head=[],
        pieces=[sse_frame({"index": 0, "content": piece, "stop": False, "id_slot": 0}) for piece in pieces],
        tail=[sse_frame({"index": 0, "content": "", "id_slot": 0, "stop": True, **last})],
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
