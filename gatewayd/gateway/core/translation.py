"""How one request's body and answer get from the client's dialect to the backend's and back.

The registry (``gatewayd.gateway.dialects.registry``) picks one ``Translator`` per request:

- ``Passthrough`` when client and backend speak the same dialect: only the model name in the request
  changes, and the answer's bytes are relayed as they are (token counts are read from them);
- ``CodecTranslator`` for a chat request across dialects: the client's ``ClientCodec`` decodes the body
  into the internal ``ChatRequest``, the backend's ``BackendCodec`` encodes it, and the answer goes the
  other way (``core.chat``, ``core.codec``);
- a direct translator for the endpoints with no chat semantics (raw completions, embeddings), which exist
  in two dialects only (``gatewayd.gateway.dialects.completions`` and ``.embeddings``).
"""

from __future__ import annotations

import abc
from dataclasses import replace

from gatewayd.gateway.core.capability import PLAIN, Capabilities
from gatewayd.gateway.core.chat import ChatEvent, ChatResponse, Finish, MessageStart
from gatewayd.gateway.core.codec import BackendCodec, ClientCodec, StreamDecoder, StreamEncoder
from gatewayd.gateway.core.profile import DialectProfile, Payload
from gatewayd.gateway.core.usage import Usage
from gatewayd.gateway.core.wire import expect_dict


class StreamTranslator(abc.ABC):
    """Translates one streamed response, event by event. One instance per stream; not thread-safe.

    The stream machine (``core.stream``) parses each upstream event once (an SSE ``data:`` payload other
    than the backend dialect's ``done_data``, or an NDJSON line), hands it to ``event`` and frames what
    comes back for the client. When the upstream ends normally it calls ``finish`` and frames that too.
    Both raise ``BadGateway`` on a malformed or truncated upstream stream, and on an error the backend
    reports mid-stream; the client's stream then ends with its dialect's ``stream_error``.
    """

    __slots__ = ("usage",)

    def __init__(self) -> None:
        #: token counts, filled in as the usage-bearing event passes
        self.usage = Usage()

    @abc.abstractmethod
    def event(self, payload: object) -> list[Payload]:
        """One parsed upstream event -> zero or more client payloads."""

    def finish(self) -> list[Payload]:
        """The upstream ended normally: trailing client payloads."""
        return []

    def failure(self, message: str, code: str) -> list[Payload] | None:
        """The stream broke: the client payloads that end it, or None for the client dialect's
        ``stream_error`` event."""
        return None


class Translator(abc.ABC):
    """Translates one request for a backend of another (or the same) dialect, and its answer.

    One instance per request; call ``request`` first: it records what the answer's translation needs
    (the client's stream options, embedding encoding, which upstream endpoint was used) and may change
    ``upstream_path``.

    ``client_model`` is the model name translated answers report. A passthrough translator leaves the
    answer's bytes untouched, so those keep the backend's own name.

    Raises ``BadRequest`` from ``request`` for a client body it cannot translate (e.g. an image given by
    http URL for an Ollama backend), and ``BadGateway("backend returned an unexpected ...")`` from
    ``response``/``usage``/the stream translator for an upstream body of the wrong shape.
    """

    #: True when client and backend speak the same dialect: request bodies only get the backend's model
    #: name, and answers are relayed byte for byte
    passthrough: bool = False
    #: the path on the backend, relative to its API root
    upstream_path: str
    #: what the backend's kind accepts beyond the dialect (the registry sets it for each request)
    capabilities: Capabilities = PLAIN

    def __init__(self, client: DialectProfile, upstream: DialectProfile, *, client_model: str) -> None:
        #: the client's dialect: how the client's stream is framed and ended
        self.client = client
        #: the backend's dialect: how it frames a streamed answer and where that ends
        self.upstream = upstream
        self.client_model = client_model

    @abc.abstractmethod
    def request(self, body: Payload, *, model: str, stream: bool) -> Payload:
        """The upstream request body for the client's ``body``, addressed to the backend's ``model``.

        ``stream`` is what the client asked for (``wants_stream``); the upstream body says it explicitly.
        """

    @abc.abstractmethod
    def response(self, upstream: object) -> Payload:
        """A whole (non-streamed) upstream body -> the client's body."""

    @abc.abstractmethod
    def usage(self, upstream: object) -> Usage:
        """Token counts from a whole upstream body."""

    @abc.abstractmethod
    def stream(self) -> StreamTranslator:
        """A translator for one streamed answer."""


class EmbeddingTranslator(Translator):
    """A translator for an embedding API: its answers are never streamed."""

    def stream(self) -> StreamTranslator:
        raise TypeError(f"{type(self).__name__} answers are never streamed")


class Passthrough(Translator):
    """Client and backend speak the same dialect: only the model name in the request changes.

    Answers are relayed byte for byte and therefore keep the backend's model name; their token counts
    are read as the dialect's profile says (an OpenAI stream carries them only if the client asked for
    ``stream_options.include_usage``: adding it would add a chunk the client did not ask for).
    """

    passthrough = True

    def __init__(self, dialect: DialectProfile, path: str, *, client_model: str) -> None:
        super().__init__(dialect, dialect, client_model=client_model)
        self.upstream_path = path

    def request(self, body: Payload, *, model: str, stream: bool) -> Payload:
        """``body`` itself, its ``model`` set to the backend's name."""
        body["model"] = model
        return body

    def response(self, upstream: object) -> Payload:
        return expect_dict(upstream, "response")

    def usage(self, upstream: object) -> Usage:
        return self.upstream.usage(expect_dict(upstream, "response"))

    def stream(self) -> StreamTranslator:
        return UsageTap(self.upstream)


class UsageTap(StreamTranslator):
    """Lets a same-dialect stream's events through; keeps the token counts they carry."""

    __slots__ = ("_dialect",)

    def __init__(self, dialect: DialectProfile) -> None:
        super().__init__()
        self._dialect = dialect

    def event(self, payload: object) -> list[Payload]:
        event = expect_dict(payload, "stream event")
        self.usage = self._dialect.stream_usage(self.usage, event)
        return [event]


class CodecTranslator(Translator):
    """A chat request across dialects, through the internal representation: the client's codec decodes
    the request and encodes the answer, the backend's codec encodes the request and decodes the answer.

    Answers report ``client_model`` (the decoders' model names are replaced by it)."""

    def __init__(
        self,
        client: DialectProfile,
        upstream: DialectProfile,
        codecs: tuple[ClientCodec, BackendCodec],
        *,
        client_model: str,
    ) -> None:
        super().__init__(client, upstream, client_model=client_model)
        self._client, self._backend = codecs
        self.upstream_path = self._backend.path
        #: the client's codec, for the edge to read what it kept (tools left out, a conversation to store)
        self.client_codec = self._client
        #: the last whole answer decoded by ``usage``, reused by ``response`` (the relay calls both)
        self._decoded: tuple[object, ChatResponse] | None = None

    def request(self, body: Payload, *, model: str, stream: bool) -> Payload:
        chat = self._client.decode_request(body)
        if chat.stream is not stream:
            chat = replace(chat, stream=stream)
        return self._backend.encode_request(chat, model=model)

    def _decode(self, upstream: object) -> ChatResponse:
        decoded = self._decoded
        if decoded is not None and decoded[0] is upstream:
            return decoded[1]
        response = self._backend.decode_response(upstream)
        if response.model != self.client_model:
            response = replace(response, model=self.client_model)
        self._decoded = (upstream, response)
        return response

    def response(self, upstream: object) -> Payload:
        return self._client.encode_response(self._decode(upstream))

    def usage(self, upstream: object) -> Usage:
        return self._decode(upstream).usage

    def stream(self) -> StreamTranslator:
        return CodecStream(
            self._backend.stream_decoder(), self._client.stream_encoder(), client_model=self.client_model
        )


class CodecStream(StreamTranslator):
    """Upstream payloads -> internal events (the backend's decoder) -> client payloads (the client's
    encoder). The events decoded from one upstream payload are encoded together, so that a dialect which
    carries several deltas in one event (OpenAI's chunks) can keep them together."""

    __slots__ = ("_decoder", "_encoder", "_model")

    def __init__(self, decoder: StreamDecoder, encoder: StreamEncoder, *, client_model: str) -> None:
        super().__init__()
        self._decoder = decoder
        self._encoder = encoder
        self._model = client_model

    def event(self, payload: object) -> list[Payload]:
        return self._encode(self._decoder.event(payload))

    def finish(self) -> list[Payload]:
        out = self._encode(self._decoder.finish())
        out.extend(self._encoder.finish())
        return out

    def failure(self, message: str, code: str) -> list[Payload] | None:
        return self._encoder.failure(message, code)

    def _encode(self, events: list[ChatEvent]) -> list[Payload]:
        if not events:
            return []
        for i, event in enumerate(events):
            if isinstance(event, MessageStart):
                if event.model != self._model:
                    events[i] = replace(event, model=self._model)
            elif isinstance(event, Finish):
                self.usage = event.usage
        return self._encoder.events(events)
