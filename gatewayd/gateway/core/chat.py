"""The internal representation of a chat exchange: what every dialect decodes to and encodes from.

A client's request is decoded once into a ``ChatRequest``; a backend of another dialect gets it encoded in
its own shape. The backend's answer is decoded into a ``ChatResponse`` (whole) or a sequence of
``ChatEvent`` values (streamed), which the client's dialect encodes. N dialects thus cost one decoder and
one encoder each way, not a translator per pair; traffic whose client and backend speak the same dialect
never comes here (its bytes are relayed as they are).

The values are frozen: a decoder builds them, nothing changes them afterwards. Everything a dialect
cannot express is dropped by its encoder (and listed in that dialect module's docstring), never guessed.

    ChatRequest
      messages: Message(role, parts=(Text | Image | Thinking | ToolCall | ToolResult, ...))
      tools: Tool(name, description, parameters)   tool_choice: ToolChoice
      sampling: Sampling(max_tokens, temperature, ..., stop)   output: OutputFormat   reasoning: Reasoning
    ChatResponse(parts=(Text | Thinking | ToolCall, ...), stop_reason, usage, logprobs)
    ChatEvent = MessageStart | TextDelta | ThinkingDelta | ToolCallStart | ToolCallDelta | Finish
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gatewayd.gateway.core.usage import Usage

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class Role(enum.StrEnum):
    SYSTEM = "system"  # instructions: OpenAI's system/developer, Anthropic's system, Responses' instructions
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"  # a message carrying only ToolResult parts (Anthropic puts them in a user message)


# --- content parts ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Image:
    """An image given inline (``data``: base64, with its ``media_type``) or by ``url``."""

    media_type: str | None = None
    data: str | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Thinking:
    """Reasoning text the model produced (OpenAI-compatible ``reasoning_content``, Ollama ``thinking``,
    Anthropic thinking blocks, Responses reasoning items). ``signature`` is Anthropic's opaque token, kept
    only to hand it back to a backend that speaks Anthropic."""

    text: str
    signature: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model made. ``arguments`` is the JSON text of the arguments object exactly as produced
    (dialects that carry an object parse it; an unparsable text is kept as it was, never dropped)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The answer to the call ``call_id`` (``name``: the called tool's name where a dialect needs it, e.g.
    Ollama's ``tool_name``). ``content`` is text and images."""

    call_id: str
    content: tuple[Text | Image, ...]
    name: str | None = None
    is_error: bool = False


Part = Text | Image | Thinking | ToolCall | ToolResult


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    parts: tuple[Part, ...]
    name: str | None = None

    @property
    def text(self) -> str:
        """The message's text parts joined (what a dialect with string-only content sends)."""
        return "".join(part.text for part in self.parts if isinstance(part, Text))


# --- the request ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; ``parameters`` is its JSON schema."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


class ToolMode(enum.StrEnum):
    AUTO = "auto"  # the model decides
    NONE = "none"  # no tool may be called
    REQUIRED = "required"  # some tool must be called
    NAMED = "named"  # ToolChoice.name must be called


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: ToolMode = ToolMode.AUTO
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Sampling:
    """Generation settings; None means "the backend's default". ``extra`` carries backend sampling options
    with no common name (``mirostat``, ``typical_p``, ...) by the name the client used, for dialects that
    accept them."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repeat_penalty: float | None = None
    stop: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


class OutputKind(enum.StrEnum):
    TEXT = "text"
    JSON = "json"  # any JSON object
    JSON_SCHEMA = "json_schema"  # JSON matching OutputFormat.schema


@dataclass(frozen=True, slots=True)
class OutputFormat:
    kind: OutputKind = OutputKind.TEXT
    schema: Mapping[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class Reasoning:
    """Whether and how much the model should think: ``effort`` low/medium/high (OpenAI, Responses),
    ``budget_tokens`` (Anthropic); ``enabled`` False turns thinking off where a backend can (Ollama's
    ``think: false``)."""

    enabled: bool | None = None
    effort: str | None = None
    budget_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat request as the client meant it, independent of any dialect."""

    model: str
    messages: tuple[Message, ...]
    stream: bool = False
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = ToolChoice()  # frozen: one shared default
    parallel_tool_calls: bool | None = None
    sampling: Sampling = Sampling()  # frozen: one shared default
    output: OutputFormat = OutputFormat()  # frozen: one shared default
    reasoning: Reasoning = Reasoning()  # frozen: one shared default
    #: logprobs wanted: None for none, else how many alternatives per token (0: only the chosen token)
    top_logprobs: int | None = None
    #: answers wanted (OpenAI's ``n``); a backend that gives one per request refuses more (Unsupported)
    choices: int = 1
    #: the client's end-user id (OpenAI ``user``, Anthropic ``metadata.user_id``), for backends that log it
    user: str | None = None


# --- the answer -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token and its log probability; ``top`` holds the most likely alternatives at its
    position (each with an empty ``top``). ``bytes`` is its UTF-8, where the backend gave it."""

    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None
    top: tuple[TokenLogprob, ...] = ()


class StopReason(enum.StrEnum):
    END = "end"  # the model finished its turn (OpenAI "stop", Anthropic "end_turn")
    LENGTH = "length"  # max_tokens reached
    TOOL_CALLS = "tool_calls"  # the model wants tool results
    STOP_SEQUENCE = "stop_sequence"  # a stop sequence matched (OpenAI reports it as "stop")
    CONTENT_FILTER = "content_filter"


@dataclass(frozen=True, slots=True)
class ChatResponse:
    """A whole answer. ``id`` and ``created`` are the backend's where it gave them (the client's encoder
    makes its own up otherwise)."""

    model: str
    parts: tuple[Text | Thinking | ToolCall, ...]
    stop_reason: StopReason = StopReason.END
    usage: Usage = field(default_factory=Usage)
    id: str | None = None
    created: int | None = None
    #: the stop sequence that matched, where the backend said which
    stop_sequence: str | None = None
    #: the answer's tokens with their log probabilities, when asked for (``ChatRequest.top_logprobs``)
    #: and given by the backend; None otherwise (dialects without logprobs ignore it)
    logprobs: tuple[TokenLogprob, ...] | None = None


# --- stream events ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageStart:
    """The answer begins (decoders emit it once, before any delta)."""

    model: str
    id: str | None = None
    created: int | None = None
    prompt_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    #: the log probabilities of this piece's tokens, when asked for and given (empty otherwise)
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class ThinkingDelta:
    text: str
    signature: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    """A tool call begins; ``index`` numbers the calls of this answer from 0 and names it in its deltas.
    Decoders of dialects that send a call whole emit ToolCallStart then one ToolCallDelta with all the
    arguments."""

    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of the JSON text of call ``index``'s arguments (pieces concatenate to ToolCall.arguments)."""

    index: int
    arguments: str


@dataclass(frozen=True, slots=True)
class Finish:
    """The answer ended normally (always the last event of a complete stream)."""

    stop_reason: StopReason
    usage: Usage = field(default_factory=Usage)
    stop_sequence: str | None = None


ChatEvent = MessageStart | TextDelta | ThinkingDelta | ToolCallStart | ToolCallDelta | Finish
