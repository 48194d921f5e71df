"""One module per API a client or a backend speaks, each a codec to and from ``gateway.core.chat``."""
