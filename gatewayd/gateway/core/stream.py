"""The stream state machine: what becomes of a streamed answer's bytes between backend and client. Pure:
fed the upstream's chunks, it returns the bytes to send; the relay does the IO. (``whole_answer`` does
the same for an answer that is not streamed.)

``RelayedStream`` (same dialect) cuts the upstream bytes at event boundaries and forwards whole events
as they are, never re-encoded, parsing only the events that may carry token counts (the dialect's
``usage_mark``). ``TranslatedStream`` (another dialect) decodes the upstream framing, translates event
by event and frames for the client, stopping at the upstream dialect's end marker (``done_data``) and
ending the client's stream with its dialect's ``end_bytes``.

Both raise ``BadGateway`` (naming the backend) for an upstream that breaks its framing, ends early or
mid-event, or sends nothing; the relay then ends a started stream with the client dialect's
``stream_error`` event, or answers 502 (or tries the next backend) when nothing was sent yet.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterator
from typing import Any

from gatewayd.errors import BadGateway, RequestError
from gatewayd.gateway.core.framing import Framing, NDJSONDecoder, SSEDecoder, split_complete
from gatewayd.gateway.core.profile import DialectProfile
from gatewayd.gateway.core.translation import StreamTranslator, Translator
from gatewayd.gateway.core.usage import Usage


class StreamMachine(abc.ABC):
    """One streamed answer. ``feed`` each upstream chunk in order, and stop reading once ``finished``;
    then ``end``. One instance per stream."""

    __slots__ = ("_backend", "events", "finished", "started")

    def __init__(self, backend: str | None, *, started: bool) -> None:
        self._backend = backend
        #: events produced for the client so far (the token estimate when the backend reports no usage)
        self.events = 0
        #: True once the upstream's end marker came: the rest of its body is not read
        self.finished = False
        #: True once the client's response has begun (``started``: before this stream, by keep-alives)
        self.started = started

    @abc.abstractmethod
    def feed(self, data: bytes) -> bytes:
        """The bytes to send for one upstream chunk (empty until an event is complete)."""

    @abc.abstractmethod
    def end(self) -> bytes:
        """The upstream body ended (or its end marker came): the last bytes to send."""

    @property
    @abc.abstractmethod
    def usage(self) -> Usage:
        """The token counts seen so far."""

    @abc.abstractmethod
    def failure(self, message: str, code: str) -> bytes:
        """The bytes that end this stream when it breaks after its response began: the client dialect's
        ``stream_error`` event, or what its encoder ends a broken stream with (a Responses stream ends
        with ``response.failed``, carrying the response)."""


def stream_machine(translation: Translator, backend: str | None, *, started: bool = False) -> StreamMachine:
    """The machine for one streamed answer of ``translation`` from ``backend`` (named in errors);
    ``started`` when the client's response has already begun (with keep-alive events)."""
    if translation.passthrough:
        return RelayedStream(translation.upstream, translation.stream(), backend, started=started)
    return TranslatedStream(translation, backend, started=started)


class RelayedStream(StreamMachine):
    """Same dialect: whole events forwarded as bytes; only events with the usage mark are parsed. The
    first events are checked to be JSON before the client sees a byte."""

    __slots__ = ("_dialect", "_rest", "_tap")

    def __init__(
        self, dialect: DialectProfile, tap: StreamTranslator, backend: str | None, *, started: bool
    ) -> None:
        super().__init__(backend, started=started)
        self._dialect = dialect
        self._tap = tap
        self._rest = b""

    @property
    def usage(self) -> Usage:
        return self._tap.usage

    def feed(self, data: bytes) -> bytes:
        dialect = self._dialect
        complete, self._rest = split_complete(self._rest + data if self._rest else data, dialect.framing)
        if not complete:
            return b""
        self.events += complete.count(dialect.event_mark)
        if dialect.usage_mark in complete:
            _scan_usage(complete, dialect, self._tap)
        if not self.started:
            self._check_first_events(complete)
            self.started = True
        return complete

    def failure(self, message: str, code: str) -> bytes:
        return _failure(self._dialect, self._tap, message, code)

    def end(self) -> bytes:
        if self._rest.strip():
            raise BadGateway(f"backend {self._backend} ended the stream mid-event", backend=self._backend)
        if not self.started:
            raise BadGateway(f"backend {self._backend} sent an empty stream", backend=self._backend)
        return b""

    def _check_first_events(self, complete: bytes) -> None:
        """Raise BadGateway unless the events that would start the stream are JSON: a backend answering
        garbage gets a 502 (or the next candidate) rather than the client a stream it cannot parse; later
        events are relayed unparsed."""
        dialect = self._dialect
        try:
            _parse(_decoder(dialect), complete, dialect.done_data)
        except BadGateway:
            raise BadGateway(
                f"backend {self._backend} sent a stream event that is not JSON", backend=self._backend
            ) from None


class TranslatedStream(StreamMachine):
    """Another dialect: upstream events decoded, translated, and framed in the client's dialect."""

    __slots__ = ("_client", "_decoder", "_done_data", "_error", "_stream")

    def __init__(self, translation: Translator, backend: str | None, *, started: bool) -> None:
        super().__init__(backend, started=started)
        self._stream = translation.stream()
        self._client = translation.client
        self._done_data = translation.upstream.done_data
        self._decoder = _decoder(translation.upstream)
        #: an error met after events of the same chunk: raised by ``end``, once those events are out
        self._error: BadGateway | None = None

    @property
    def usage(self) -> Usage:
        return self._stream.usage

    def feed(self, data: bytes) -> bytes:
        """The translated events of ``data``. An error met mid-chunk (an error event the backend sent,
        an event that is not JSON) comes after the events before it: those are returned, the machine is
        ``finished`` and ``end`` raises the error; with no event before it, it is raised at once."""
        encode = self._client.encode
        out: list[bytes] = []
        try:
            for payload in _events(self._decoder, data, self._done_data):
                if payload is None:
                    self.finished = True
                    break
                out.extend(encode(p) for p in self._stream.event(payload))
        except BadGateway as error:
            if not out:
                raise
            self._error = error
            self.finished = True
        if not out:
            return b""
        self.events += len(out)
        self.started = True
        return b"".join(out)

    def failure(self, message: str, code: str) -> bytes:
        return _failure(self._client, self._stream, message, code)

    def end(self) -> bytes:
        if self._error is not None:
            raise self._error
        if self._done_data is not None and not self.finished:
            raise BadGateway(f"backend {self._backend} ended the stream early", backend=self._backend)
        encode = self._client.encode
        tail = b"".join(encode(p) for p in self._stream.finish()) + self._client.end_bytes
        self.started = True
        return tail


def whole_answer(translation: Translator, raw: bytes, backend: str | None) -> tuple[bytes, Usage]:
    """The client's body for a whole upstream body, and its token counts: the bytes themselves for the
    same dialect, re-encoded otherwise. Raises BadGateway for a body that is not a JSON object (or has
    the wrong shape for the translation)."""
    try:
        payload = json.loads(raw)
    except ValueError:
        raise BadGateway(
            f"backend {backend} returned a body that is not JSON: {raw[:200]!r}", backend=backend
        ) from None
    if not isinstance(payload, dict):
        raise BadGateway(f"backend {backend} returned an unexpected body", backend=backend)
    usage = translation.usage(payload)
    if translation.passthrough:
        return raw, usage
    return json.dumps(
        translation.response(payload), separators=(",", ":"), ensure_ascii=False
    ).encode(), usage


def stream_error(dialect: DialectProfile, message: str, code: str) -> bytes:
    """The dialect's ``stream_error`` event, framed: how a broken stream with no machine ends (its
    backend failed to start after keep-alive events)."""
    return dialect.encode(dialect.stream_error(message, code))


def _failure(dialect: DialectProfile, stream: StreamTranslator, message: str, code: str) -> bytes:
    payloads = stream.failure(message, code)
    if payloads is None:
        return stream_error(dialect, message, code)
    return b"".join(dialect.encode(p) for p in payloads)


def _decoder(dialect: DialectProfile) -> SSEDecoder | NDJSONDecoder:
    return SSEDecoder() if dialect.framing is Framing.SSE else NDJSONDecoder()


def _parse(decoder: SSEDecoder | NDJSONDecoder, data: bytes, done_data: str | None) -> list[Any]:
    """Parsed upstream events in ``data``; None stands for the SSE event whose data is ``done_data``
    (and ends the list). Raises BadGateway on bad JSON."""
    return list(_events(decoder, data, done_data))


def _events(decoder: SSEDecoder | NDJSONDecoder, data: bytes, done_data: str | None) -> Iterator[Any]:
    """``_parse``, one event at a time: the events before a bad one are yielded before BadGateway."""
    try:
        if isinstance(decoder, SSEDecoder):
            for event in decoder.feed(data):
                if event.data == done_data:
                    yield None
                    return
                if event.data:
                    yield json.loads(event.data)
        else:
            for line in decoder.feed(data):
                yield json.loads(line)
    except ValueError:
        raise BadGateway("backend sent a stream event that is not JSON") from None


def _scan_usage(complete: bytes, dialect: DialectProfile, tap: StreamTranslator) -> None:
    """Feed the events of ``complete`` that mention token counts (the dialect's usage mark) to the tap."""
    marker = dialect.usage_mark
    if dialect.framing is Framing.SSE:
        for block in complete.split(b"\n\n"):
            if marker in block:
                for line in block.splitlines():
                    if line.startswith(b"data:") and marker in line:
                        _feed_json(tap, line[5:])
    else:
        for line in complete.splitlines():
            if marker in line:
                _feed_json(tap, line)


def _feed_json(tap: StreamTranslator, raw: bytes) -> None:
    try:
        payload = json.loads(raw)
    except ValueError:
        return
    if isinstance(payload, dict):
        try:
            tap.event(payload)
        except RequestError:
            pass
