"""What a kind of backend accepts beyond its dialect's common ground, for the translators to send it
what it needs (``gatewayd.gateway.backends.kinds`` gives each kind its row; the dialect registry hands
it to every translator).

Two servers that speak OpenAI's API differ in what else they take: llama-server and vLLM accept
sampling options OpenAI does not have (``top_k``, ``min_p``, ``repeat_penalty``, ...) as extra body
fields, where OpenAI refuses any field it does not know; OpenAI's reasoning models refuse ``max_tokens``
and want ``max_completion_tokens``; llama-server fills in the middle at its own ``/infill``, OpenAI at
``/v1/completions`` with a ``suffix``, vLLM not at all.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Infill(enum.Enum):
    """How a backend fills in the middle (a completion with a ``suffix``: editor autocomplete)."""

    NONE = "none"  # it cannot: a request with a suffix is refused (400) rather than answered prefix-only
    GENERATE = "generate"  # Ollama's /api/generate takes ``suffix`` (with the model's own FIM template)
    COMPLETIONS = "completions"  # OpenAI's /v1/completions takes ``suffix``
    LLAMA_INFILL = "llama-infill"  # llama-server's /infill: ``input_prefix`` and ``input_suffix``


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What one kind of backend accepts (see the module docstring)."""

    #: the kind's name, for messages ("backend a (vllm) cannot fill in the middle")
    kind: str
    infill: Infill = Infill.NONE
    #: the chat body field that carries the token limit: ``max_tokens``, or ``max_completion_tokens``
    #: for OpenAI (which accepts it for every model, and requires it for its reasoning models)
    max_tokens_field: str = "max_tokens"
    #: whether sampling options without an OpenAI name (``top_k``, ``min_p``, ``repeat_penalty``,
    #: ``mirostat``...) may go as extra body fields; OpenAI answers 400 to any field it does not know
    extra_sampling: bool = False
    #: the body field of the repetition penalty on such a backend (llama-server's ``repeat_penalty``,
    #: vLLM's ``repetition_penalty``)
    repeat_penalty_field: str = "repeat_penalty"
    #: whether one request can ask for several choices (OpenAI's ``n``); Ollama answers one
    choices: bool = True


#: what a backend of unknown kind is assumed to take: OpenAI's common ground only
PLAIN = Capabilities(kind="openai-compatible")
