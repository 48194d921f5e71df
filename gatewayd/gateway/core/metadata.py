"""What backends say about their models, read from their own answers, and how gatewayd serves it. Pure.

Sources, per backend kind:

- Ollama: /api/tags (size, digest, modified_at, details, newer servers also capabilities) and /api/show
  (capabilities, model_info with ``<architecture>.context_length``, template, parameters);
- llama-server: /v1/models ``meta`` (n_ctx_train, n_params, size) and /props (the context it runs with,
  ``default_generation_settings.n_ctx``; ``modalities``; ``chat_template`` and ``chat_template_caps``);
- vLLM: /v1/models ``max_model_len``;
- other OpenAI-compatible servers: the ``context_length`` / ``context_window`` / ``max_context_length``
  fields some add to /v1/models entries.

A field a backend did not give stays None and is left out of every answer: nothing is made up, except an
Ollama listing's ``digest``, which Ollama's own CLI needs on every model (``model_digest``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any

COMPLETION = "completion"
EMBEDDING = "embedding"
TOOLS = "tools"
VISION = "vision"
AUDIO = "audio"

#: fields of OpenAI-compatible model entries that carry the context length, most specific first
_CONTEXT_FIELDS = ("max_model_len", "context_length", "context_window", "max_context_length")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model as its backend describes it; None = the backend did not say."""

    context_length: int | None = None
    capabilities: tuple[str, ...] | None = None
    size: int | None = None
    digest: str | None = None
    modified_at: str | None = None
    format: str | None = None
    family: str | None = None
    families: tuple[str, ...] | None = None
    parameter_size: str | None = None
    quantization_level: str | None = None
    parent_model: str | None = None
    embedding_length: int | None = None
    template: str | None = None
    parameters: str | None = None
    license: str | None = None
    #: Ollama's own model_info (GGUF metadata keys), as its /api/show gave it
    model_info: Mapping[str, Any] | None = None

    def merged(self, other: ModelInfo | None) -> ModelInfo:
        """This one, with what it does not know taken from ``other``."""
        if other is None:
            return self
        missing = {f.name: getattr(other, f.name) for f in fields(self) if getattr(self, f.name) is None}
        return replace(self, **{name: value for name, value in missing.items() if value is not None})

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))


# --- reading backends' answers ---------------------------------------------------------------------------


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _texts(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        return None
    items = tuple(item for item in value if isinstance(item, str) and item)
    return items or None


def _details(details: Any) -> dict[str, Any]:
    if not isinstance(details, dict):
        return {}
    return {
        "format": _text(details.get("format")),
        "family": _text(details.get("family")),
        "families": _texts(details.get("families")),
        "parameter_size": _text(details.get("parameter_size")),
        "quantization_level": _text(details.get("quantization_level")),
        "parent_model": _text(details.get("parent_model")),
        "context_length": _int(details.get("context_length")),
        "embedding_length": _int(details.get("embedding_length")),
    }


def from_ollama_tag(entry: Mapping[str, Any]) -> ModelInfo:
    """One entry of Ollama's /api/tags."""
    return ModelInfo(
        size=_int(entry.get("size")),
        digest=_text(entry.get("digest")),
        modified_at=_text(entry.get("modified_at")),
        capabilities=_texts(entry.get("capabilities")),
        **_details(entry.get("details")),
    )


def from_ollama_show(payload: Mapping[str, Any]) -> ModelInfo:
    """Ollama's /api/show answer for one model."""
    raw = payload.get("model_info")
    model_info = MappingProxyType(dict(raw)) if isinstance(raw, dict) and raw else None
    context = embedding = None
    if model_info is not None:
        architecture = model_info.get("general.architecture")
        if isinstance(architecture, str):
            context = _int(model_info.get(f"{architecture}.context_length"))
            embedding = _int(model_info.get(f"{architecture}.embedding_length"))
    details = _details(payload.get("details"))
    return ModelInfo(
        capabilities=_texts(payload.get("capabilities")),
        modified_at=_text(payload.get("modified_at")),
        template=_text(payload.get("template")),
        parameters=_text(payload.get("parameters")),
        license=_text(payload.get("license")),
        model_info=model_info,
        **{
            **details,
            "context_length": context or details["context_length"],
            "embedding_length": embedding or details["embedding_length"],
        },
    )


def from_openai_model(entry: Mapping[str, Any]) -> ModelInfo:
    """One entry of an OpenAI-compatible /v1/models: vLLM's max_model_len, llama-server's ``meta``, or the
    context fields other servers add."""
    context = next((n for name in _CONTEXT_FIELDS if (n := _int(entry.get(name))) is not None), None)
    meta = entry.get("meta")
    size = parameters = None
    if isinstance(meta, dict):
        context = context or _int(meta.get("n_ctx")) or _int(meta.get("n_ctx_train"))
        size = _int(meta.get("size"))
        count = _int(meta.get("n_params"))
        parameters = human_number(count) if count is not None else None
    return ModelInfo(context_length=context, size=size, parameter_size=parameters)


def from_llama_props(props: Mapping[str, Any]) -> ModelInfo:
    """llama-server's /props: the context it runs with per slot, what the chat template can do, whether a
    projector gives it vision or audio."""
    settings = props.get("default_generation_settings")
    context = _int(settings.get("n_ctx")) if isinstance(settings, dict) else None
    context = context or _int(props.get("n_ctx"))
    capabilities: list[str] = []
    caps = props.get("chat_template_caps")
    template = _text(props.get("chat_template"))
    if template is not None or isinstance(caps, dict):
        capabilities.append(COMPLETION)
    if isinstance(caps, dict) and caps.get("supports_tools") is True:
        capabilities.append(TOOLS)
    modalities = props.get("modalities")
    if isinstance(modalities, dict):
        capabilities += [name for name in (VISION, AUDIO) if modalities.get(name) is True]
    return ModelInfo(context_length=context, capabilities=tuple(capabilities) or None, template=template)


def human_number(count: int) -> str:
    """A parameter count as Ollama writes it ("8B", "7.6B", "135.00M", "22K")."""
    for scale, suffix, decimals in ((1e9, "B", 1), (1e6, "M", 2), (1e3, "K", 0)):
        if count >= scale:
            number = count / scale
            if suffix == "K" or number == math.floor(number):
                return f"{number:.0f}{suffix}"
            return f"{number:.{decimals}f}{suffix}"
    return str(count)


# --- serving it ----------------------------------------------------------------------------------------


def ollama_details(info: ModelInfo | None) -> dict[str, Any]:
    """Ollama's ``details`` object: only the fields the backend gave."""
    if info is None:
        return {}
    values = {
        "parent_model": info.parent_model,
        "format": info.format,
        "family": info.family,
        "families": list(info.families) if info.families is not None else None,
        "parameter_size": info.parameter_size,
        "quantization_level": info.quantization_level,
    }
    return {name: value for name, value in values.items() if value is not None}


def model_digest(name: str) -> str:
    """The digest listed for a model whose backend gives none: sha256 of ``gatewayd/<name>``, in hex.
    Ollama's CLI (``ollama ls``, ``ollama ps``) cuts every model's digest to 12 characters and crashes on
    a model without one; derived from the name, it stays the same across restarts and instances."""
    return hashlib.sha256(f"gatewayd/{name}".encode()).hexdigest()


def ollama_tag(name: str, info: ModelInfo | None) -> dict[str, Any]:
    """One model of /api/tags (and the base of an /api/ps entry): the digest is the backend's (an
    Ollama's), else ``model_digest``."""
    entry: dict[str, Any] = {"name": name, "model": name}
    if info is not None:
        for key, value in (("modified_at", info.modified_at), ("size", info.size)):
            if value is not None:
                entry[key] = value
        if info.capabilities is not None:
            entry["capabilities"] = list(info.capabilities)
    entry["digest"] = info.digest if info is not None and info.digest else model_digest(name)
    entry["details"] = ollama_details(info)
    return entry


def ollama_model_info(info: ModelInfo | None) -> dict[str, Any]:
    """Ollama's ``model_info``: the backend's own when it is an Ollama, else the keys gatewayd can fill
    from what the backend said (``<architecture>.context_length``, as Ollama's clients look it up)."""
    if info is None:
        return {}
    if info.model_info is not None:
        return dict(info.model_info)
    architecture = info.family or "general"
    values: dict[str, Any] = {}
    if info.family is not None:
        values["general.architecture"] = info.family
    if info.context_length is not None:
        values[f"{architecture}.context_length"] = info.context_length
    if info.embedding_length is not None:
        values[f"{architecture}.embedding_length"] = info.embedding_length
    return values


def ollama_show(info: ModelInfo | None) -> dict[str, Any]:
    """/api/show for one model: Ollama's fields, those the backend did not give left out (model_info is
    always there, as Ollama always sends it)."""
    shown: dict[str, Any] = {}
    if info is not None:
        for key, value in (
            ("license", info.license),
            ("parameters", info.parameters),
            ("template", info.template),
        ):
            if value is not None:
                shown[key] = value
    shown["details"] = ollama_details(info)
    shown["model_info"] = ollama_model_info(info)
    if info is not None and info.capabilities is not None:
        shown["capabilities"] = list(info.capabilities)
    if info is not None and info.modified_at is not None:
        shown["modified_at"] = info.modified_at
    return shown


def openai_fields(info: ModelInfo | None) -> dict[str, Any]:
    """What /v1/models adds to an OpenAI model object: ``context_length`` (the name OpenRouter and LM
    Studio use) and ``max_model_len`` (vLLM's), when the backend said."""
    if info is None or info.context_length is None:
        return {}
    return {"context_length": info.context_length, "max_model_len": info.context_length}
