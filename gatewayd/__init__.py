"""gatewayd: keeps an OpenAI- and Ollama-compatible LLM gateway up.

Import direction (enforced by import-linter, see pyproject.toml):

    cli  ->  supervisor, gateway  ->  config  ->  errors

- ``gatewayd.supervisor`` owns the process: port lock, listening socket, signals, generations, respawn,
  service-manager integration. It knows nothing about LLMs; it is handed a ``GenerationFactory``.
- ``gatewayd.gateway`` is the routed inference core. It knows nothing about signals or processes.
  Inside it: ``app``/``inference`` -> ``relay`` -> ``backends`` -> ``core``; ``core`` is pure (stdlib,
  config, errors).
- Neither half imports the other; only ``gatewayd.cli`` wires them together.
"""

__version__ = "0.1.0"
