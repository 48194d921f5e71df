"""CPU per request of the chat translation paths, in process (no sockets): what translating a request and
its answer costs gatewayd, beside the existing OpenAI chat over Ollama path.

    .venv/bin/python -m bench.bench_codecs                 # 2000 requests per path, median of 5 rounds

For each path (client API over backend dialect) one request is: the client body's translation for the
backend, then its answer's, whole (the backend's JSON body parsed and the client's body serialised, as the
relay does) and streamed (the backend's stream bytes, 16 text pieces and a usage event, fed in one chunk per
event through the same stream machine the relay drives). ``passthrough`` rows are the same-dialect paths
(the request only gets the backend's model name, the stream's bytes are cut at event boundaries and its
usage tapped). Prints microseconds of CPU per request (median over rounds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from gatewayd.gateway.core.profile import DialectProfile
from gatewayd.gateway.core.stream import stream_machine
from gatewayd.gateway.dialects.anthropic import ANTHROPIC
from gatewayd.gateway.dialects.ollama import OLLAMA
from gatewayd.gateway.dialects.openai_chat import OPENAI
from gatewayd.gateway.dialects.registry import Api, translator

PIECES = 16
DEFAULT_REQUESTS = 2000
DEFAULT_ROUNDS = 5

_HISTORY = [{"role": "user", "content": "write a haiku about gateways " * 4}]
CLIENT_BODIES: dict[Api, dict[str, Any]] = {
    Api.OPENAI_CHAT: {"model": "m", "messages": [{"role": "system", "content": "be brief"}, *_HISTORY]},
    Api.ANTHROPIC_MESSAGES: {"model": "m", "max_tokens": 100, "system": "be brief", "messages": _HISTORY},
    Api.OPENAI_RESPONSES: {"model": "m", "instructions": "be brief", "input": _HISTORY, "store": False},
}


def _sse(payload: dict[str, Any], name: str | None = None) -> bytes:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(payload)}\n\n".encode()


def _openai_answer() -> tuple[dict[str, Any], list[bytes]]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunks = [
        _sse({**base, "choices": [{"index": 0, "delta": {"content": f"word{i} "}, "finish_reason": None}]})
        for i in range(PIECES)
    ]
    chunks.append(_sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    chunks.append(_sse({**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": PIECES}}))
    chunks.append(b"data: [DONE]\n\n")
    message = {"role": "assistant", "content": "".join(f"word{i} " for i in range(PIECES))}
    whole = {
        **base,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": PIECES},
    }
    return whole, chunks


def _ollama_answer() -> tuple[dict[str, Any], list[bytes]]:
    line = {"model": "m", "created_at": "2025-01-01T00:00:00Z", "done": False}
    chunks = [
        (json.dumps({**line, "message": {"role": "assistant", "content": f"word{i} "}}) + "\n").encode()
        for i in range(PIECES)
    ]
    done = {"done": True, "done_reason": "stop", "prompt_eval_count": 9, "eval_count": PIECES}
    chunks.append(
        (json.dumps({**line, "message": {"role": "assistant", "content": ""}, **done}) + "\n").encode()
    )
    text = "".join(f"word{i} " for i in range(PIECES))
    return {**line, "message": {"role": "assistant", "content": text}, **done}, chunks


def _anthropic_answer() -> tuple[dict[str, Any], list[bytes]]:
    start = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": []}
    chunks = [
        _sse({"type": "message_start", "message": {**start, "usage": {"input_tokens": 9}}}, "message_start"),
        _sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start",
        ),
    ]
    chunks += [
        _sse(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f"word{i} "}},
            "content_block_delta",
        )
        for i in range(PIECES)
    ]
    chunks.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": PIECES},
    }
    chunks += [_sse(delta, "message_delta"), _sse({"type": "message_stop"}, "message_stop")]
    text = "".join(f"word{i} " for i in range(PIECES))
    whole = {
        **start,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 9, "output_tokens": PIECES},
    }
    return whole, chunks


ANSWERS: dict[DialectProfile, Callable[[], tuple[dict[str, Any], list[bytes]]]] = {
    OPENAI: _openai_answer,
    OLLAMA: _ollama_answer,
    ANTHROPIC: _anthropic_answer,
}
PATHS: list[tuple[Api, DialectProfile]] = [
    (Api.OPENAI_CHAT, OPENAI),  # passthrough: the reference
    (Api.OPENAI_CHAT, OLLAMA),  # the existing translated path
    (Api.ANTHROPIC_MESSAGES, ANTHROPIC),  # passthrough
    (Api.ANTHROPIC_MESSAGES, OPENAI),
    (Api.ANTHROPIC_MESSAGES, OLLAMA),
    (Api.OPENAI_RESPONSES, OPENAI),
    (Api.OPENAI_RESPONSES, OLLAMA),
    (Api.OPENAI_RESPONSES, ANTHROPIC),
]


def one_request(
    api: Api, backend: DialectProfile, *, stream: bool, fixture: tuple[bytes, bytes, list[bytes]]
) -> None:
    """What the relay does with one request: parse the client's body, translate it and serialise it for the
    backend; parse the backend's whole body and serialise the client's, or feed its stream's events."""
    raw_request, raw_answer, chunks = fixture
    translation = translator(api, backend, client_model="m")
    json.dumps(translation.request(json.loads(raw_request), model="m", stream=stream))
    if not stream:
        upstream = json.loads(raw_answer)
        translation.usage(upstream)
        if not translation.passthrough:
            json.dumps(translation.response(upstream))
        return
    machine = stream_machine(translation, "bench")
    for chunk in chunks:
        machine.feed(chunk)
    machine.end()


def fixture(api: Api, backend: DialectProfile, *, stream: bool) -> tuple[bytes, bytes, list[bytes]]:
    whole, chunks = ANSWERS[backend]()
    return json.dumps(dict(CLIENT_BODIES[api], stream=stream)).encode(), json.dumps(whole).encode(), chunks


def measure(api: Api, backend: DialectProfile, *, stream: bool, requests: int) -> float:
    """CPU microseconds per request."""
    data = fixture(api, backend, stream=stream)
    started = time.process_time()
    for _ in range(requests):
        one_request(api, backend, stream=stream, fixture=data)
    return (time.process_time() - started) / requests * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    args = parser.parse_args(argv)
    print(f"{'client API':<22} {'backend':<10} {'whole µs':>9} {'stream µs':>10}")
    for api, backend in PATHS:
        figures = []
        for stream in (False, True):
            one_request(api, backend, stream=stream, fixture=fixture(api, backend, stream=stream))  # warm-up
            rounds = [
                measure(api, backend, stream=stream, requests=args.requests) for _ in range(args.rounds)
            ]
            figures.append(statistics.median(rounds))
        kind = "passthrough" if api.dialect is backend else backend.name
        print(f"{api.path:<22} {kind:<10} {figures[0]:>9.1f} {figures[1]:>10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
