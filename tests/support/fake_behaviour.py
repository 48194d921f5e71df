"""How the fake model server misbehaves: the ``Behaviour`` value and the control that hands it to requests.

A test scripts failures by replacing fields of the current ``Behaviour`` (at construction, from Python with
``FakeBackend.set(...)`` or over HTTP with ``POST /_fake/behaviour``). Each request takes one snapshot when
it arrives, so a change never alters a request already being answered, except that a request hanging on
``hang`` is let go when a later update sets ``hang`` to False.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio


@dataclass(frozen=True, slots=True)
class Behaviour:
    """Everything a test can script. The defaults answer promptly and correctly."""

    #: pieces a streamed reply is cut into; also the completion token count
    chunks: int = 8
    #: pause before each streamed piece after the first
    chunk_delay_seconds: float = 0.0
    #: pause before the response headers are sent (prompt processing)
    first_byte_delay_seconds: float = 0.0
    #: streams only: pause after the response headers, before the first event (time to first token)
    first_chunk_delay_seconds: float = 0.0
    #: answer with this HTTP status and the dialect's error body instead of a reply
    fail_status: int | None = None
    #: None: faults apply to every request. N: only the next N faulted requests see a fault, then every
    #: fault field (fail_status, garbage, hang, die_after_chunks, error_after_chunks) is cleared
    fail_times: int | None = None
    #: answer 200 with a body that is not JSON (garbage SSE / NDJSON lines for streams)
    garbage: bool = False
    #: streams only: after this many content pieces, abort the TCP connection (no chunked terminator)
    die_after_chunks: int | None = None
    #: streams only: after this many content pieces, the next piece and an in-band error event (the
    #: dialect's, as the real server sends one when generation fails) go out in one write, and the stream
    #: ends there; 0: the head, the first piece and the error are the first write
    error_after_chunks: int | None = None
    #: accept the request and never answer, until the client goes away or ``hang`` is set to False
    hang: bool = False
    #: also apply fail_status / garbage / hang to model listings and health probes (normally only to
    #: model requests: chat, completions, embeddings, generate, show)
    fail_probes: bool = False
    #: health probes answer 503 "loading model", and every other endpoint a 503 dialect error
    loading: bool = False
    #: slots reported by llama-server's /slots and /props
    max_concurrency: int = 4
    #: /props carries total_slots (False: as older llama-servers, which tell it only by /slots)
    props_total_slots: bool = True
    #: Retry-After header (seconds) on every 429 and 503 answer
    retry_after: float | None = None
    #: length of embedding vectors unless the request asks for ``dimensions``
    dim: int = 8

    def updated(self, changes: Mapping[str, Any]) -> Behaviour:
        """A copy with ``changes`` applied.

        Raises ValueError naming the field for an unknown field or a value of the wrong type or range.
        """
        for name, value in changes.items():
            _check_field(name, value)
        return dataclasses.replace(self, **changes)

    def has_fault(self, *, streaming: bool) -> bool:
        """Whether a request (streamed or not) answered with this behaviour sees a scripted fault."""
        return (
            self.fail_status is not None
            or self.garbage
            or self.hang
            or (streaming and (self.die_after_chunks is not None or self.error_after_chunks is not None))
        )

    def without_faults(self) -> Behaviour:
        return dataclasses.replace(
            self,
            fail_status=None,
            fail_times=None,
            garbage=False,
            hang=False,
            die_after_chunks=None,
            error_after_chunks=None,
        )

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FLOAT_FIELDS = {
    "chunk_delay_seconds",
    "first_byte_delay_seconds",
    "first_chunk_delay_seconds",
    "retry_after",
}
_BOOL_FIELDS = {"garbage", "hang", "fail_probes", "loading", "props_total_slots"}
_OPTIONAL_FIELDS = {"fail_status", "fail_times", "die_after_chunks", "error_after_chunks", "retry_after"}
_MINIMUM = {"chunks": 1, "max_concurrency": 1, "dim": 1, "fail_status": 100}


def _check_field(name: str, value: Any) -> None:
    if name not in Behaviour.__dataclass_fields__:
        raise ValueError(f"unknown behaviour field {name!r}")
    if value is None:
        if name not in _OPTIONAL_FIELDS:
            raise ValueError(f"behaviour field {name!r} cannot be null")
        return
    if name in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise ValueError(f"behaviour field {name!r} must be a boolean, got {value!r}")
        return
    if name in _FLOAT_FIELDS:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or value < _MINIMUM.get(name, 0):
        raise ValueError(f"behaviour field {name!r} has an invalid value {value!r}")


class BehaviourControl:
    """The current ``Behaviour`` of one fake server, and the bookkeeping of ``fail_times``.

    Lives on the server's event loop: every method must be called from that loop's thread.
    """

    def __init__(self, behaviour: Behaviour) -> None:
        self._behaviour = behaviour
        self._released: anyio.Event | None = None

    @property
    def current(self) -> Behaviour:
        return self._behaviour

    def update(self, changes: Mapping[str, Any]) -> Behaviour:
        """Apply a partial update (raises ValueError, changing nothing, if any field is invalid).

        Setting ``hang`` to False lets every request hanging now go on to a normal answer.
        """
        self._behaviour = self._behaviour.updated(changes)
        if changes.get("hang") is False and self._released is not None:
            self._released.set()
            self._released = None
        return self._behaviour

    def admit(self, *, streaming: bool) -> Behaviour:
        """The behaviour one arriving request is answered with, counting it against ``fail_times``."""
        behaviour = self._behaviour
        if behaviour.fail_times is not None and behaviour.has_fault(streaming=streaming):
            if behaviour.fail_times <= 0:
                self._behaviour = behaviour.without_faults()
                return self._behaviour
            left = behaviour.fail_times - 1
            self._behaviour = (
                behaviour.without_faults() if left == 0 else behaviour.updated({"fail_times": left})
            )
        return behaviour

    async def wait_released(self) -> None:
        """Block until an update sets ``hang`` to False. Cancellation (the client going away) propagates."""
        if self._released is None:
            self._released = anyio.Event()
        await self._released.wait()
