"""The APIs gatewayd speaks, one module per dialect, and the registry that routes requests through them.

    registry.py          client paths -> Api (endpoint, dialect profile, client codec); translator()
    openai_chat.py       OpenAI /v1: profile (OPENAI), chat ClientCodec and BackendCodec
    ollama.py            Ollama /api: profile (OLLAMA), chat and generate ClientCodecs, chat BackendCodec
    completions.py       raw completions: /v1/completions <-> /api/generate (direct translators)
    infill.py            fill in the middle on llama-server: completions with a suffix <-> its /infill
    embeddings.py        embeddings: /v1/embeddings <-> /api/embed, /api/embeddings (direct translators)

Adding a dialect: one module here with a ``core.profile.DialectProfile`` (framing, end marker, usage
tap, error shapes, how clients send their key), a keep-alive event, a ``core.codec.ClientCodec`` and/or
``BackendCodec`` for chat, and a model-list parser; then its rows in ``registry`` (an ``Api`` member and
its ``ENDPOINTS`` row, a ``BACKEND_CHAT`` row, a ``PATH_DIALECTS`` row) and, for backends that speak it,
a ``BackendKind`` and its row in ``gatewayd.gateway.backends.kinds.KINDS``. Chat then translates to and
from every other dialect through ``core.chat``; same-dialect traffic is relayed as bytes.

Dialect modules import only ``gatewayd.gateway.core`` (and errors/config): an import contract says so.
"""
