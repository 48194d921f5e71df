"""Stream framing: cutting byte streams at event boundaries, decoding SSE and NDJSON, encoding events.

Everything here runs once per chunk of a stream, so it searches with ``rfind`` and copies a buffered tail
only when an event spans chunks. Decoders split on bytes and decode whole lines, so a chunk boundary inside
a UTF-8 character is harmless (line terminators are ASCII and never occur inside one).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gatewayd.gateway.core.jsontext import dumps

#: the data of the SSE event that ends an OpenAI stream
DONE = "[DONE]"
SSE_DONE = b"data: [DONE]\n\n"

_CR = 0x0D
_LF = 0x0A


class Framing(enum.StrEnum):
    """How a dialect frames a streamed answer (its end rule is the dialect profile's)."""

    SSE = "sse"  # text/event-stream: "data: <json>\n\n" events, with or without "event:" names
    NDJSON = "ndjson"  # application/x-ndjson: one JSON object per line

    @property
    def content_type(self) -> str:
        return "text/event-stream" if self is Framing.SSE else "application/x-ndjson"


def split_complete(buffer: bytes | bytearray, framing: Framing) -> tuple[bytes, bytes]:
    """Split ``buffer`` into the prefix made of complete events and the incomplete rest.

    SSE: the prefix ends after the last blank line, whatever the line terminators (``\\n\\n``,
    ``\\r\\n\\r\\n``, ``\\r\\r`` and mixtures); NDJSON: after the last ``\\n``. Either part may be empty.
    A trailing ``\\r`` counts as a terminator; a ``\\n`` that completes it may start the rest, which a
    decoder reads as one more empty line and ignores.
    """
    end = buffer.rfind(b"\n") + 1 if framing is Framing.NDJSON else _end_of_last_blank_line(buffer)
    return bytes(buffer[:end]), bytes(buffer[end:])


def _end_of_last_blank_line(buffer: bytes | bytearray) -> int:
    # A blank line is a terminator right after another one. Writing terminators as CR, LF or CR LF, that is
    # LF LF, CR CR or LF CR (the CR LF CR LF case), the last possibly followed by the LF of a CR LF.
    end = buffer.rfind(b"\n\n") + 2  # 1 when absent
    # The other pairs need only be searched after the best end found so far.
    start = max(end - 1, 0)
    for pair in (b"\r\r", b"\n\r"):
        found = buffer.rfind(pair, start) + 2
        if found > end:
            end = found
            start = end - 1
    if end < 2:
        return 0
    if buffer[end - 1] == _CR and end < len(buffer) and buffer[end] == _LF:
        end += 1
    return end


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched server-sent event. ``data`` joins the event's ``data:`` lines with ``\\n``."""

    event: str | None
    data: str


class _LineSplitter:
    """Incremental split on CR, LF and CR LF, including a CR LF cut between two chunks."""

    __slots__ = ("_pending", "_skip_lf")

    def __init__(self) -> None:
        self._pending = bytearray()
        self._skip_lf = False

    def feed(self, data: bytes) -> list[bytes]:
        """The lines ``data`` completes, without their terminators."""
        if self._skip_lf and data[:1] == b"\n":
            data = data[1:]
        self._skip_lf = False
        cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
        if cut < 0:
            self._pending += data
            return []
        if self._pending:
            complete = bytes(self._pending) + data[: cut + 1]
            self._pending.clear()
        else:
            complete = data[: cut + 1]
        self._pending += data[cut + 1 :]
        self._skip_lf = data[cut] == _CR and cut + 1 == len(data)
        return complete.splitlines()

    def tail(self) -> bytes:
        return bytes(self._pending)


class SSEDecoder:
    """Incremental server-sent events decoder (the WHATWG event-stream rules that matter for LLM streams).

    Comments are ignored, ``event:`` is kept, ``id:`` and ``retry:`` are ignored, an event is dispatched at a
    blank line when it has at least one ``data:`` line. Invalid UTF-8 is replaced, not raised.
    """

    __slots__ = ("_data", "_event", "_lines")

    def __init__(self) -> None:
        self._lines = _LineSplitter()
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, data: bytes) -> list[SSEEvent]:
        """The events completed by ``data``, in order."""
        events: list[SSEEvent] = []
        for raw in self._lines.feed(data):
            if not raw:
                if self._data:
                    events.append(SSEEvent(self._event, "\n".join(self._data)))
                    self._data = []
                self._event = None
                continue
            line = raw.decode("utf-8", errors="replace")
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value or None
            # comments (empty name), id, retry and unknown fields are ignored
        return events

    @staticmethod
    def is_done(event: SSEEvent) -> bool:
        """Whether ``event`` is OpenAI's end-of-stream marker ``data: [DONE]``."""
        return event.data == DONE


class NDJSONDecoder:
    """Incremental newline-delimited JSON splitter: yields whole lines, does not parse them."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The non-blank lines completed by ``data``, without their LF (a CR before it is kept: JSON reads it
        as whitespace)."""
        cut = data.rfind(b"\n")
        if cut < 0:
            self._pending += data
            return []
        if self._pending:
            complete = bytes(self._pending) + data[:cut]
            self._pending.clear()
        else:
            complete = data[:cut]
        self._pending += data[cut + 1 :]
        return [line for line in complete.split(b"\n") if line.strip()]

    def tail(self) -> bytes:
        """Bytes after the last newline: a final line without terminator, or a cut one."""
        return bytes(self._pending)


def encode_sse(payload: Mapping[str, Any]) -> bytes:
    """``data: <compact json>\\n\\n``."""
    return f"data: {dumps(payload)}\n\n".encode()


def encode_ndjson(payload: Mapping[str, Any]) -> bytes:
    """``<compact json>\\n``."""
    return f"{dumps(payload)}\n".encode()


def encode_sse_comment(text: str) -> bytes:
    """``: text\\n\\n``: an SSE comment, ignored by clients, used as a keep-alive."""
    return f": {text}\n\n".encode()


def encode(framing: Framing, payload: Mapping[str, Any]) -> bytes:
    """``payload`` framed for ``framing``."""
    return encode_sse(payload) if framing is Framing.SSE else encode_ndjson(payload)
