"""The one JSON encoder of the gateway's hot path: compact separators, non-ASCII kept as is."""

from __future__ import annotations

import json

#: ``dumps(value) -> str``: compact JSON text (``{"a":1}``), as every encoder and translator writes it
dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
