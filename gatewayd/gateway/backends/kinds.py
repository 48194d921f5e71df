"""The backend kinds: one row each says which dialect a kind speaks, how it is probed and told ready,
how its model list reads, and how it is sent the configured API key."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gatewayd.config import Backend, BackendKind
from gatewayd.gateway.core.capability import PLAIN, Capabilities, Infill
from gatewayd.gateway.core.metadata import ModelInfo, from_ollama_tag, from_openai_model
from gatewayd.gateway.core.profile import DialectProfile
from gatewayd.gateway.dialects import anthropic, ollama, openai_chat

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})

#: until a llama-server has answered /props or /slots: the slots it starts with by default (-np auto)
LLAMA_SERVER_DEFAULT_CONCURRENCY = 4
#: Ollama does not say how many requests it runs at once (OLLAMA_NUM_PARALLEL is not in /api/ps nor
#: /api/show); it queues the rest itself and may run several models, so a few at once keep it busy
#: without piling requests into its own queue, where gatewayd can no longer fall back
OLLAMA_DEFAULT_CONCURRENCY = 4


def bearer_auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


def anthropic_auth(api_key: str) -> dict[str, str]:
    return {"x-api-key": api_key}


@dataclass(frozen=True, slots=True)
class Kind:
    #: the API the kind's servers speak: requests in another dialect are translated for it
    dialect: DialectProfile
    #: GET path that answers 200 once a server of this kind can serve (when the backend sets no ready_path)
    ready_path: str
    #: GET path of the model list (the probe), and how its answer reads
    models_path: str
    model_ids: Callable[[Any], tuple[str, ...] | None]
    #: what each entry of that list says about its model (context length, size...), by model id
    listed_info: Callable[[Any], dict[str, ModelInfo] | None]
    #: what its servers accept beyond the dialect: infill, the token-limit field, extra sampling options
    capabilities: Capabilities = PLAIN
    #: GET path probed before the model list, answering 200 while the server is healthy (None: none)
    health_path: str | None = None
    #: whether the server reports its idle slots at GET /slots and its total_slots at GET /props
    #: (llama-server): the concurrency limit is then learned from it
    reports_slots: bool = False
    #: requests sent at once when the backend sets no max_concurrency and has not said (None: unbounded)
    default_concurrency: int | None = None
    #: the headers that carry a backend's configured api_key
    auth: Callable[[str], dict[str, str]] = bearer_auth
    #: headers every request to a server of this kind carries (e.g. an API version)
    headers: Mapping[str, str] = field(default_factory=lambda: _NO_HEADERS)


def _listed_info(
    payload: Any, entries: str, model_id: Callable[[Any], str], parse: Callable[[Any], ModelInfo]
) -> dict[str, ModelInfo] | None:
    """What each entry of a model listing says about its model (entries that say nothing left out)."""
    try:
        found = {model_id(entry): parse(entry) for entry in payload[entries]}
    except (KeyError, TypeError, AttributeError):
        return None
    return {model: info for model, info in found.items() if not info.empty}


def _openai_listed_info(payload: Any) -> dict[str, ModelInfo] | None:
    return _listed_info(payload, "data", lambda entry: str(entry["id"]), from_openai_model)


def _ollama_listed_info(payload: Any) -> dict[str, ModelInfo] | None:
    return _listed_info(
        payload, "models", lambda entry: str(entry.get("model") or entry["name"]), from_ollama_tag
    )


KINDS: Mapping[BackendKind, Kind] = MappingProxyType(
    {
        # OpenAI itself: /v1/completions takes a suffix; chat wants max_completion_tokens (its reasoning
        # models refuse max_tokens, every model accepts it); no field it does not know
        BackendKind.OPENAI: Kind(
            openai_chat.OPENAI,
            "/v1/models",
            "/v1/models",
            openai_chat.model_ids,
            _openai_listed_info,
            capabilities=Capabilities("openai", Infill.COMPLETIONS, max_tokens_field="max_completion_tokens"),
        ),
        BackendKind.LLAMA_SERVER: Kind(
            openai_chat.OPENAI,
            "/health",
            "/v1/models",
            openai_chat.model_ids,
            _openai_listed_info,
            capabilities=Capabilities("llama-server", Infill.LLAMA_INFILL, extra_sampling=True),
            health_path="/health",
            reports_slots=True,
            default_concurrency=LLAMA_SERVER_DEFAULT_CONCURRENCY,
        ),
        # vLLM refuses a completion's suffix ("suffix is not currently supported")
        BackendKind.VLLM: Kind(
            openai_chat.OPENAI,
            "/health",
            "/v1/models",
            openai_chat.model_ids,
            _openai_listed_info,
            capabilities=Capabilities("vllm", extra_sampling=True, repeat_penalty_field="repetition_penalty"),
            health_path="/health",
        ),
        BackendKind.OLLAMA: Kind(
            ollama.OLLAMA,
            "/api/version",
            "/api/tags",
            ollama.model_ids,
            _ollama_listed_info,
            capabilities=Capabilities("ollama", Infill.GENERATE, choices=False),
            default_concurrency=OLLAMA_DEFAULT_CONCURRENCY,
        ),
        BackendKind.ANTHROPIC: Kind(
            anthropic.ANTHROPIC,
            "/v1/models",
            "/v1/models",
            anthropic.model_ids,
            _openai_listed_info,
            auth=anthropic_auth,
            headers=MappingProxyType({"anthropic-version": anthropic.ANTHROPIC_VERSION}),
        ),
    }
)


def auth_headers(backend: Backend) -> dict[str, str]:
    """The headers every request to ``backend`` carries: its kind's, and its api_key in its kind's way."""
    kind = KINDS[backend.kind]
    headers = dict(kind.headers) if kind.headers else {}
    if backend.api_key:
        headers.update(kind.auth(backend.api_key))
    return headers
