"""What a dialect module provides to translate through the internal representation (``core.chat``).

A dialect that clients speak provides a ``ClientCodec``: it decodes the client's request body into a
``ChatRequest`` and encodes the answer (whole, or event by event) in the client's shape. A dialect that
backends speak provides a ``BackendCodec``: it encodes a ``ChatRequest`` as that backend's request body and
decodes its answer. A request whose client and backend speak the same dialect uses neither: its bytes are
relayed as they are.

Codecs work on parsed JSON payloads; the dialect's framing (SSE with ``[DONE]``, SSE with named events,
NDJSON) turns payloads into bytes and back. Every method is pure, and every stream codec is one object per
stream (not thread-safe). Decoders raise ``BadRequest`` for a client body they cannot read (naming the
field) and ``BadGateway`` for an upstream body of the wrong shape or an error the backend reports in band.
"""

from __future__ import annotations

import abc
from typing import Any

from gatewayd.gateway.core.capability import PLAIN, Capabilities
from gatewayd.gateway.core.chat import ChatEvent, ChatRequest, ChatResponse

#: a JSON object as parsed by ``json.loads``
Payload = dict[str, Any]


class StreamEncoder(abc.ABC):
    """Encodes one streamed answer for the client, event by event."""

    @abc.abstractmethod
    def event(self, event: ChatEvent) -> list[Payload]:
        """One internal event -> zero or more client payloads, in order."""

    def events(self, events: list[ChatEvent]) -> list[Payload]:
        """The events decoded from one upstream payload -> client payloads, in order. By default each
        event is encoded on its own; a dialect that carries several deltas in one event (an OpenAI chunk
        holds text, reasoning and tool-call pieces together) overrides this to keep them together."""
        out: list[Payload] = []
        for event in events:
            out.extend(self.event(event))
        return out

    def finish(self) -> list[Payload]:
        """The stream ended after ``Finish``: any trailing payloads (the framing adds its own end marker,
        such as SSE's ``[DONE]``)."""
        return []

    def failure(self, message: str, code: str) -> list[Payload] | None:
        """The last payloads of a stream that broke (the backend died, a timeout, the gateway's drain),
        for a dialect whose stream ends with its answer object marked failed; None (the default): the
        dialect's ``stream_error`` event ends it."""
        return None


class ClientCodec(abc.ABC):
    """The client side of one chat-like API (e.g. Anthropic's /v1/messages).

    ``decode_request`` comes first; the codec may keep what the answer's encoding needs (the client's
    stream options, the model name it asked for)."""

    @abc.abstractmethod
    def decode_request(self, body: Payload) -> ChatRequest:
        """The client's body -> the internal request. Raises BadRequest naming the field at fault."""

    @abc.abstractmethod
    def encode_response(self, response: ChatResponse) -> Payload:
        """A whole internal answer -> the client's response body."""

    @abc.abstractmethod
    def stream_encoder(self) -> StreamEncoder:
        """An encoder for one streamed answer."""


class StreamDecoder(abc.ABC):
    """Decodes one streamed upstream answer, payload by payload."""

    @abc.abstractmethod
    def event(self, payload: object) -> list[ChatEvent]:
        """One parsed upstream event -> zero or more internal events. Raises BadGateway on an in-band
        error event or a malformed one."""

    def finish(self) -> list[ChatEvent]:
        """The upstream stream ended: trailing events. Raises BadGateway when the stream was cut (no
        ``Finish`` was or can be produced)."""
        return []


class BackendCodec(abc.ABC):
    """The backend side of one chat-like API (e.g. OpenAI's /v1/chat/completions on llama-server)."""

    #: the path of the endpoint on the backend, relative to its API root
    path: str
    #: what the backend's kind accepts beyond the dialect (the registry sets it for each request)
    capabilities: Capabilities = PLAIN

    @abc.abstractmethod
    def encode_request(self, request: ChatRequest, *, model: str) -> Payload:
        """The internal request -> the backend's request body, addressed to the backend's ``model``."""

    @abc.abstractmethod
    def decode_response(self, payload: object) -> ChatResponse:
        """A whole upstream body -> the internal answer. Raises BadGateway for the wrong shape."""

    @abc.abstractmethod
    def stream_decoder(self) -> StreamDecoder:
        """A decoder for one streamed upstream answer."""
