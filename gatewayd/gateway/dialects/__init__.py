"""The APIs gatewayd speaks, one module per dialect, and the registry that routes requests through them.

    registry.py          client paths -> Api (endpoint, dialect profile, client codec); translator()
    openai_chat.py       OpenAI /v1: profile, chat ClientCodec and BackendCodec
    ollama.py            Ollama /api: profile, chat ClientCodec and BackendCodec
    completions.py       raw completions: /v1/completions <-> /api/generate (direct translators)
    embeddings.py        embeddings: /v1/embeddings <-> /api/embed, /api/embeddings (direct translators)

Dialect modules import only ``gatewayd.gateway.core`` (and errors/config); the backend kinds that speak
each dialect are listed in ``gatewayd.gateway.backends.kinds``.
"""
