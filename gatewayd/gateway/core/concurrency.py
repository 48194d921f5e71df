"""How many requests one backend is sent at once, and where that number came from. Pure.

An explicit ``max_concurrency`` always wins. Otherwise the backend's own word: llama-server's /props
``total_slots``, or the number of its /slots. Until a backend has said (or when its kind never says), the
kind's documented default; a kind with no default (vLLM, hosted APIs) is unbounded, its own 429s driving
fallback and backoff.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Source(enum.Enum):
    CONFIG = "config"  # the backend's max_concurrency
    PROPS = "props"  # llama-server's /props total_slots
    SLOTS = "slots"  # the number of entries in llama-server's /slots
    DEFAULT = "default"  # the kind's default, until (or unless) the backend says
    UNBOUNDED = "unbounded"  # no limit: the backend's own 429s push back


#: sources a probe can learn the limit from
LEARNED = frozenset({Source.PROPS, Source.SLOTS})


@dataclass(frozen=True, slots=True)
class Concurrency:
    """The limit in force (None = unbounded) and its source."""

    limit: int | None
    source: Source

    @classmethod
    def initial(cls, configured: int | None, kind_default: int | None) -> Concurrency:
        """Before any probe: the config's value, else the kind's default, else unbounded."""
        if configured is not None:
            return cls(configured, Source.CONFIG)
        if kind_default is not None:
            return cls(kind_default, Source.DEFAULT)
        return cls(None, Source.UNBOUNDED)

    def learned(self, slots: int | None, source: Source | None) -> Concurrency:
        """After a probe that reported ``slots`` (from ``source``): the config's value is kept; a probe that
        said nothing keeps what was learned before (a restarting server is not forgotten)."""
        if self.source is Source.CONFIG or slots is None or slots < 1 or source not in LEARNED:
            return self
        return Concurrency(slots, source)

    @property
    def label(self) -> str:
        """As the log shows it: "8 (props)", or "unbounded"."""
        if self.limit is None:
            return self.source.value
        return f"{self.limit} ({self.source.value})"
