"""The fake server's health and status endpoints: /health, /slots, /props, /metrics (llama-server and
vLLM) and / (Ollama's "Ollama is running").

``/health`` answers as the fake's kind would: vLLM with an empty 200 (empty 503 while loading), every other
kind as llama-server does, ``{"status": "ok"}`` or 503 ``{"status": "loading model"}``.
"""

from __future__ import annotations

from aiohttp import web

from tests.support.fake_http import BEHAVIOUR, STATE, Kind, dumps, openai_error, retry_headers

#: the context llama-server runs with per slot (-c divided by the slots)
CONTEXT_SIZE = 4096
#: a chat template that renders tools (chat_template_caps.supports_tools)
CHAT_TEMPLATE = (
    "{%- if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}"
    "{%- for message in messages %}<|{{ message.role }}|>{{ message.content }}{% endfor %}<|assistant|>"
)

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    state, behaviour = request.app[STATE], request[BEHAVIOUR]
    status = 503 if behaviour.loading else 200
    headers = retry_headers(status, behaviour)
    if state.kind is Kind.VLLM:
        return web.Response(status=status, headers=headers)
    body = {"status": "loading model" if behaviour.loading else "ok"}
    return web.json_response(body, status=status, headers=headers, dumps=dumps)


def _loading(request: web.Request) -> web.Response:
    return openai_error(503, "Loading model", request[BEHAVIOUR])


@routes.get("/slots")
async def slots(request: web.Request) -> web.Response:
    """One slot per ``max_concurrency``; the first ``in_flight`` of them are processing."""
    behaviour = request[BEHAVIOUR]
    if behaviour.loading:
        return _loading(request)
    busy = request.app[STATE].stats.snapshot().in_flight
    return web.json_response(
        [
            {
                "id": slot,
                "id_task": slot if slot < busy else -1,
                "n_ctx": CONTEXT_SIZE,
                "speculative": False,
                "is_processing": slot < busy,
            }
            for slot in range(behaviour.max_concurrency)
        ],
        dumps=dumps,
    )


@routes.get("/props")
async def props(request: web.Request) -> web.Response:
    state, behaviour = request.app[STATE], request[BEHAVIOUR]
    if behaviour.loading:
        return _loading(request)
    props = {
        "default_generation_settings": {"id": 0, "n_ctx": CONTEXT_SIZE, "params": {}},
        "total_slots": behaviour.max_concurrency,
        "model_alias": state.models[0] if state.models else "",
        "model_path": f"/models/{state.models[0]}.gguf" if state.models else "",
        "modalities": {"vision": False, "audio": False},
        "chat_template": CHAT_TEMPLATE,
        "chat_template_caps": {
            "supports_object_arguments": True,
            "supports_parallel_tool_calls": True,
            "supports_preserve_reasoning": False,
            "supports_string_content": True,
            "supports_system_role": True,
            "supports_tool_calls": True,
            "supports_tools": True,
            "supports_typed_content": False,
        },
        "bos_token": "<s>",
        "eos_token": "</s>",
        "build_info": "fake",
        "is_sleeping": False,
    }
    if not behaviour.props_total_slots:
        del props["total_slots"]
    return web.json_response(props, dumps=dumps)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text: llama-server's ``llamacpp:*`` names, or vLLM's ``vllm:*`` for the vLLM kind."""
    state, behaviour = request.app[STATE], request[BEHAVIOUR]
    if behaviour.loading:
        return _loading(request)
    snapshot = state.stats.snapshot()
    if state.kind is Kind.VLLM:
        lines = []
        for model in state.models:
            lines += [
                "# HELP vllm:num_requests_running Number of requests currently running.",
                "# TYPE vllm:num_requests_running gauge",
                f'vllm:num_requests_running{{model_name="{model}"}} {snapshot.in_flight}',
                "# HELP vllm:num_requests_waiting Number of requests waiting.",
                "# TYPE vllm:num_requests_waiting gauge",
                f'vllm:num_requests_waiting{{model_name="{model}"}} 0',
            ]
    else:
        lines = [
            "# HELP llamacpp:requests_processing Number of requests processing.",
            "# TYPE llamacpp:requests_processing gauge",
            f"llamacpp:requests_processing {snapshot.in_flight}",
            "# HELP llamacpp:requests_deferred Number of requests deferred.",
            "# TYPE llamacpp:requests_deferred gauge",
            "llamacpp:requests_deferred 0",
            "# HELP llamacpp:n_busy_slots_per_decode Average number of busy slots per llama_decode() call.",
            "# TYPE llamacpp:n_busy_slots_per_decode counter",
            f"llamacpp:n_busy_slots_per_decode {min(snapshot.in_flight, behaviour.max_concurrency)}",
        ]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8")


@routes.get("/")
async def root(request: web.Request) -> web.Response:
    if request.app[STATE].kind is Kind.OLLAMA:
        return web.Response(text="Ollama is running")
    return web.Response(text="fake model server")
