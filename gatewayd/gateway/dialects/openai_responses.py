"""OpenAI's Responses API (``POST /v1/responses``): the client codec.

Decoded: ``input`` as a string or items — messages (roles user, assistant, system, developer; content a
string or ``input_text``/``output_text``/``input_image`` parts), ``function_call`` (its ``call_id`` is the
call's id), ``function_call_output``, ``reasoning`` (summary and content text become Thinking;
``encrypted_content`` is dropped: no backend here can read it) —, ``instructions``, function tools (the
flat shape ``{type, name, description, parameters, strict}``), ``tool_choice``, ``parallel_tool_calls``,
``text.format`` (json_schema, json_object), ``reasoning.effort``, ``max_output_tokens``, ``temperature``,
``top_p``, ``user``/``safety_identifier``.

Dropped: tools of other types (web_search, file_search, namespace groups, ...: a chat backend cannot run
them; their types are listed in ``dropped_tools`` for the edge to log), item types with no internal
equivalent (item references, built-in tool calls), ``include``, ``prompt_cache_key``, ``client_metadata``,
``truncation``, ``service_tier``. ``store`` and ``previous_response_id`` are the edge's business: it
prepends a stored conversation to ``input`` before decoding and stores ``conversation_items`` after.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

from gatewayd.errors import BadRequest, RequestError
from gatewayd.gateway.core.chat import (
    ChatEvent,
    ChatRequest,
    ChatResponse,
    Finish,
    Image,
    Message,
    MessageStart,
    OutputFormat,
    OutputKind,
    Reasoning,
    Role,
    Sampling,
    StopReason,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    ToolMode,
    ToolResult,
)
from gatewayd.gateway.core.codec import ClientCodec, StreamEncoder
from gatewayd.gateway.core.framing import Framing, encode_sse_comment
from gatewayd.gateway.core.jsontext import dumps
from gatewayd.gateway.core.profile import DialectProfile, Payload
from gatewayd.gateway.core.usage import Usage, token_count
from gatewayd.gateway.dialects.openai_chat import OPENAI

_ROLES: Mapping[str, Role] = {
    "user": Role.USER,
    "assistant": Role.ASSISTANT,
    "system": Role.SYSTEM,
    "developer": Role.SYSTEM,
}
_TOOL_MODES: Mapping[str, ToolMode] = {
    "auto": ToolMode.AUTO,
    "none": ToolMode.NONE,
    "required": ToolMode.REQUIRED,
}


class ResponsesProfile(DialectProfile):
    """OpenAI's error objects and keys; SSE with named events and no end marker (a stream ends with
    ``response.completed``). No backend kind speaks it: requests are always translated."""

    name = "openai.responses"
    framing = Framing.SSE
    event_mark = b"data:"
    usage_mark = b'"usage"'

    def wants_stream(self, body: Mapping[str, Any]) -> bool:
        return body.get("stream") is True

    def usage(self, payload: Payload) -> Usage:
        usage = payload.get("usage")
        if not isinstance(usage, dict):
            return Usage()
        return Usage(token_count(usage.get("input_tokens")), token_count(usage.get("output_tokens")))

    def stream_usage(self, usage: Usage, payload: Payload) -> Usage:
        response = payload.get("response")
        return self.usage(response) if isinstance(response, dict) and response.get("usage") else usage

    def error_status(self, error: RequestError) -> int:
        return OPENAI.error_status(error)

    def error_body(self, error: RequestError) -> bytes:
        return OPENAI.error_body(error)

    def stream_error(self, message: str, code: str) -> Payload:
        return error_event(message, code)

    def encode(self, payload: Mapping[str, Any]) -> bytes:
        return f"event: {payload.get('type', 'error')}\ndata: {dumps(payload)}\n\n".encode()


RESPONSES = ResponsesProfile()


def keepalive(model: str, backend: str) -> bytes:
    return encode_sse_comment(f"gatewayd: starting backend {backend}")


def new_response_id() -> str:
    return "resp_" + secrets.token_hex(24)


def _new_item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def function_call_item_id(call_id: str) -> str:
    """The item id of the function call ``call_id``: derived from it, so a streamed item and a follow-up
    turn that sends it back agree."""
    return call_id if call_id.startswith("fc_") else "fc_" + call_id


class ResponsesClient(ClientCodec):
    """Serves ``/v1/responses`` to Responses clients (Codex CLI, ``client.responses`` of the openai SDK).

    After ``decode_request``: ``store`` and ``previous_response_id`` as the client sent them, the
    request's ``input`` as items (``input_items``) and the tool types left out (``dropped_tools``). After
    the answer was encoded: ``last_response``, the response object (whole, or the one of
    ``response.completed``)."""

    def __init__(self) -> None:
        self.model = ""
        self.store = True
        self.previous_response_id: str | None = None
        self.dropped_tools: list[str] = []
        self.input_items: list[Payload] = []
        self.last_response: Payload | None = None
        self._echo: Payload = {}
        self._id = new_response_id()
        self._created = int(time.time())

    def decode_request(self, body: Payload) -> ChatRequest:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("'model' is required and must be a non-empty string", param="model")
        self.model = model
        self.store = body.get("store") is not False
        previous = body.get("previous_response_id")
        self.previous_response_id = previous if isinstance(previous, str) and previous else None
        raw_input = body.get("input")
        if isinstance(raw_input, str):
            self.input_items = [{"type": "message", "role": "user", "content": raw_input}]
        elif isinstance(raw_input, list):
            self.input_items = raw_input
        elif raw_input is None:
            self.input_items = []
        else:
            raise BadRequest("'input' must be a string or a list of items", param="input")
        messages: list[Message] = []
        instructions = body.get("instructions")
        if isinstance(instructions, str) and instructions:
            messages.append(Message(Role.SYSTEM, (Text(instructions),)))
        messages.extend(decode_items(self.input_items))
        tools = self._decode_tools(body.get("tools"))
        reasoning = body.get("reasoning")
        effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
        user = body.get("user") or body.get("safety_identifier")
        max_tokens = body.get("max_output_tokens")
        parallel = body.get("parallel_tool_calls")
        self._echo = {
            "instructions": instructions if isinstance(instructions, str) else None,
            "max_output_tokens": max_tokens if type(max_tokens) is int else None,
            "parallel_tool_calls": parallel if isinstance(parallel, bool) else True,
            "previous_response_id": self.previous_response_id,
            "reasoning": {"effort": effort, "summary": None},
            "store": self.store,
            "temperature": _number(body.get("temperature")),
            "text": body.get("text") if isinstance(body.get("text"), dict) else {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice") or "auto",
            "tools": [
                tool
                for tool in body.get("tools") or ()
                if isinstance(tool, dict) and tool.get("type") == "function"
            ],
            "top_p": _number(body.get("top_p")),
            "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
        }
        return ChatRequest(
            model=model,
            messages=tuple(messages),
            stream=body.get("stream") is True,
            tools=tools,
            tool_choice=_decode_tool_choice(body.get("tool_choice")),
            parallel_tool_calls=parallel if isinstance(parallel, bool) else None,
            sampling=Sampling(
                max_tokens=max_tokens if type(max_tokens) is int and max_tokens > 0 else None,
                temperature=_number(body.get("temperature")),
                top_p=_number(body.get("top_p")),
            ),
            output=_decode_format(body.get("text")),
            reasoning=Reasoning(effort=effort if isinstance(effort, str) else None),
            user=user if isinstance(user, str) else None,
        )

    def _decode_tools(self, value: object) -> tuple[Tool, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise BadRequest("'tools' must be a list", param="tools")
        tools: list[Tool] = []
        for index, tool in enumerate(value):
            if not isinstance(tool, dict):
                raise BadRequest(f"'tools[{index}]' must be an object", param="tools")
            if tool.get("type") != "function":
                self.dropped_tools.append(str(tool.get("type")))
                continue
            name = tool.get("name")
            if not isinstance(name, str) or not name:
                raise BadRequest(f"'tools[{index}].name' is required", param="tools")
            description = tool.get("description")
            parameters = tool.get("parameters")
            tools.append(
                Tool(
                    name=name,
                    description=description if isinstance(description, str) else None,
                    parameters=parameters
                    if isinstance(parameters, dict)
                    else {"type": "object", "properties": {}},
                )
            )
        return tuple(tools)

    def encode_response(self, response: ChatResponse) -> Payload:
        items: list[Payload] = []
        for part in response.parts:
            if isinstance(part, Text):
                if items and items[-1]["type"] == "message":
                    items[-1]["content"][0]["text"] += part.text
                else:
                    items.append(_message_item(_new_item_id("msg"), part.text, "completed"))
            elif isinstance(part, Thinking):
                items.append(_reasoning_item(_new_item_id("rs"), part.text))
            else:
                items.append(_call_item(part.id, part.name, part.arguments, "completed"))
        self.last_response = self._response(response.model, items, response.stop_reason, response.usage)
        return self.last_response

    def stream_encoder(self) -> ResponsesStreamEncoder:
        return ResponsesStreamEncoder(self)

    def _response(
        self, model: str, output: list[Payload], stop: StopReason | None, usage: Usage | None
    ) -> Payload:
        status, details = "in_progress", None
        if stop is StopReason.LENGTH:
            status, details = "incomplete", {"reason": "max_output_tokens"}
        elif stop is StopReason.CONTENT_FILTER:
            status, details = "incomplete", {"reason": "content_filter"}
        elif stop is not None:
            status = "completed"
        return {
            "id": self._id,
            "object": "response",
            "created_at": self._created,
            "status": status,
            "error": None,
            "incomplete_details": details,
            "model": model or self.model,
            "output": output,
            "usage": None if usage is None else _usage(usage),
            **self._echo,
        }

    def conversation_items(self) -> list[Payload]:
        """What a later request naming this response continues from: its input items, then its output."""
        output = self.last_response["output"] if self.last_response else []
        return [*self.input_items, *output]


def decode_items(items: list[Any]) -> list[Message]:
    """Responses input items -> messages. Consecutive assistant items (reasoning, text, function calls)
    make one assistant message, consecutive function call outputs one TOOL message."""
    messages: list[Message] = []
    names: dict[str, str] = {}

    def add(role: Role, *parts: Any) -> None:
        if messages and messages[-1].role is role and role in (Role.ASSISTANT, Role.TOOL):
            messages[-1] = Message(role, (*messages[-1].parts, *parts))
        else:
            messages.append(Message(role, parts))

    for index, item in enumerate(items):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise BadRequest(f"'{where}' must be an object", param="input")
        kind = item.get("type", "message")
        if kind == "message":
            role = _ROLES.get(str(item.get("role")))
            if role is None:
                raise BadRequest(
                    f"'{where}.role' must be user, assistant, system or developer", param="input"
                )
            add(role, *_content_parts(item.get("content"), where))
        elif kind == "function_call":
            call_id = str(item.get("call_id") or item.get("id") or "")
            name = str(item.get("name") or "")
            names[call_id] = name
            arguments = item.get("arguments")
            add(Role.ASSISTANT, ToolCall(call_id, name, arguments if isinstance(arguments, str) else "{}"))
        elif kind == "function_call_output":
            call_id = str(item.get("call_id") or "")
            output = item.get("output")
            content = (Text(output),) if isinstance(output, str) else _content_parts(output, where)
            add(
                Role.TOOL,
                ToolResult(
                    call_id, tuple(p for p in content if isinstance(p, Text | Image)), names.get(call_id)
                ),
            )
        elif kind == "reasoning":
            texts: list[str] = [
                part["text"]
                for key in ("summary", "content")
                for part in item.get(key) or ()
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            ]
            if texts:
                add(Role.ASSISTANT, Thinking("\n".join(texts)))
        # other item types (item_reference, built-in tool calls and their outputs) carry nothing here
    return messages


def _content_parts(content: object, where: str) -> tuple[Text | Image, ...]:
    if isinstance(content, str):
        return (Text(content),)
    if content is None:
        return ()
    if not isinstance(content, list):
        raise BadRequest(f"'{where}.content' must be a string or a list of parts", param="input")
    parts: list[Text | Image] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append(Text(part["text"]))
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append(Text(part["refusal"]))
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise BadRequest(
                    f"'{where}': input_image needs an image_url (file ids are not served)", param="input"
                )
            parts.append(_image(url))
    return tuple(parts)


def _image(url: str) -> Image:
    if url.startswith("data:") and ";base64," in url:
        media_type, _, data = url[5:].partition(";base64,")
        return Image(media_type=media_type or None, data=data)
    return Image(url=url)


def _decode_tool_choice(value: object) -> ToolChoice:
    if isinstance(value, str):
        mode = _TOOL_MODES.get(value)
        if mode is None:
            raise BadRequest("'tool_choice' must be auto, none, required or a function", param="tool_choice")
        return ToolChoice(mode)
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("name"), str):
        return ToolChoice(ToolMode.NAMED, value["name"])
    return ToolChoice()


def _decode_format(text: object) -> OutputFormat:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return OutputFormat()
    if fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        name = fmt.get("name")
        strict = fmt.get("strict")
        return OutputFormat(
            OutputKind.JSON_SCHEMA,
            schema=fmt["schema"],
            name=name if isinstance(name, str) else None,
            strict=strict if isinstance(strict, bool) else None,
        )
    if fmt.get("type") == "json_object":
        return OutputFormat(OutputKind.JSON)
    return OutputFormat()


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _usage(usage: Usage) -> Payload:
    inputs = usage.prompt_tokens or 0
    outputs = usage.completion_tokens or 0
    return {
        "input_tokens": inputs,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": outputs,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": inputs + outputs,
    }


def _text_part(text: str) -> Payload:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str, status: str) -> Payload:
    content = [_text_part(text)] if status == "completed" else []
    return {"type": "message", "id": item_id, "role": "assistant", "status": status, "content": content}


def _reasoning_item(item_id: str, text: str) -> Payload:
    summary = [{"type": "summary_text", "text": text}] if text else []
    return {"type": "reasoning", "id": item_id, "summary": summary}


def _call_item(call_id: str, name: str, arguments: str, status: str) -> Payload:
    return {
        "type": "function_call",
        "id": function_call_item_id(call_id),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


class ResponsesStreamEncoder(StreamEncoder):
    """Internal events -> the Responses stream: response.created and response.in_progress, then per
    output item (reasoning, message, function call) its added / part / delta / done events, then
    response.completed (or response.incomplete). Every payload has a ``sequence_number``; each payload's
    ``type`` is its SSE event name (the framing writes it)."""

    def __init__(self, codec: ResponsesClient) -> None:
        self._codec = codec
        self._sequence = 0
        self._model = codec.model
        self._started = False
        self._items: list[Payload] = []  # done (or open) output items, in output order
        self._open: Payload | None = None  # the item being streamed
        self._text: list[str] = []  # the open item's text (message text, reasoning summary)
        self._calls: dict[int, int] = {}  # tool call index -> output index

    def _emit(self, payload: Payload) -> Payload:
        payload["sequence_number"] = self._sequence
        self._sequence += 1
        return payload

    def _start(self) -> list[Payload]:
        self._started = True
        snapshot = self._codec._response(self._model, [], None, None)
        return [
            self._emit({"type": "response.created", "response": snapshot}),
            self._emit({"type": "response.in_progress", "response": dict(snapshot)}),
        ]

    def event(self, event: ChatEvent) -> list[Payload]:
        out: list[Payload] = []
        if not self._started:
            if isinstance(event, MessageStart) and event.model:
                self._model = event.model
            out.extend(self._start())
            if isinstance(event, MessageStart):
                return out
        if isinstance(event, TextDelta):
            if event.text:
                out.extend(self._ensure("message"))
                self._text.append(event.text)
                out.append(
                    self._emit(
                        self._where(
                            "response.output_text.delta", content_index=0, delta=event.text, logprobs=[]
                        )
                    )
                )
        elif isinstance(event, ThinkingDelta):
            if event.text:
                out.extend(self._ensure("reasoning"))
                self._text.append(event.text)
                out.append(
                    self._emit(
                        self._where(
                            "response.reasoning_summary_text.delta", summary_index=0, delta=event.text
                        )
                    )
                )
        elif isinstance(event, ToolCallStart):
            out.extend(self._close())
            item = _call_item(event.id, event.name, "", "in_progress")
            self._calls[event.index] = len(self._items)
            out.extend(self._add(item))
        elif isinstance(event, ToolCallDelta):
            index = self._calls.get(event.index)
            if index is not None and event.arguments:
                item = self._items[index]
                item["arguments"] += event.arguments
                out.append(
                    self._emit(
                        {
                            "type": "response.function_call_arguments.delta",
                            "item_id": item["id"],
                            "output_index": index,
                            "delta": event.arguments,
                        }
                    )
                )
        elif isinstance(event, Finish):
            out.extend(self._close())
            response = self._codec._response(self._model, self._items, event.stop_reason, event.usage)
            self._codec.last_response = response
            kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
            out.append(self._emit({"type": kind, "response": response}))
        return out

    def failure(self, message: str, code: str) -> list[Payload]:
        """``response.failed``, carrying the response as far as it got (status ``failed``, its ``error``),
        after ``response.created`` if the stream had not begun: the openai client's stream helper needs
        that first. ``error.code`` is ``server_error`` (the codes OpenAI defines for a response's error);
        the gateway's own code is its ``type``. Not kept as ``last_response``: a broken answer is no
        conversation to continue."""
        out = [] if self._started else self._start()
        output = [dict(item) for item in self._items]
        if self._open is not None and output:  # the item being streamed, with its text so far
            text = "".join(self._text)
            if self._open["type"] == "message":
                output[-1]["content"] = [_text_part(text)]
            elif self._open["type"] == "reasoning":
                output[-1]["summary"] = [{"type": "summary_text", "text": text}]
        for item in output:
            if item.get("status") == "in_progress":
                item["status"] = "incomplete"
        response = self._codec._response(self._model, output, None, None)
        response["status"] = "failed"
        response["error"] = {"code": "server_error", "message": message, "param": None, "type": code}
        out.append(self._emit({"type": "response.failed", "response": response}))
        return out

    def _where(self, kind: str, **fields: Any) -> Payload:
        assert self._open is not None
        return {"type": kind, "item_id": self._open["id"], "output_index": len(self._items) - 1, **fields}

    def _add(self, item: Payload) -> list[Payload]:
        self._items.append(item)
        self._open = item
        self._text = []
        added = {
            "type": "response.output_item.added",
            "output_index": len(self._items) - 1,
            "item": dict(item),
        }
        return [self._emit(added)]

    def _ensure(self, kind: str) -> list[Payload]:
        if self._open is not None and self._open["type"] == kind:
            return []
        out = self._close()
        if kind == "message":
            out.extend(self._add(_message_item(_new_item_id("msg"), "", "in_progress")))
            part = _text_part("")
            out.append(self._emit(self._where("response.content_part.added", content_index=0, part=part)))
        else:
            item = {"type": "reasoning", "id": _new_item_id("rs"), "summary": []}
            out.extend(self._add(item))
            part = {"type": "summary_text", "text": ""}
            out.append(
                self._emit(self._where("response.reasoning_summary_part.added", summary_index=0, part=part))
            )
        return out

    def _close(self) -> list[Payload]:
        item = self._open
        if item is None:
            return []
        out: list[Payload] = []
        text = "".join(self._text)
        if item["type"] == "message":
            part = _text_part(text)
            out.append(
                self._emit(self._where("response.output_text.done", content_index=0, text=text, logprobs=[]))
            )
            out.append(self._emit(self._where("response.content_part.done", content_index=0, part=part)))
            item["content"] = [part]
        elif item["type"] == "reasoning":
            part = {"type": "summary_text", "text": text}
            out.append(
                self._emit(self._where("response.reasoning_summary_text.done", summary_index=0, text=text))
            )
            out.append(
                self._emit(self._where("response.reasoning_summary_part.done", summary_index=0, part=part))
            )
            item["summary"] = [part]
        if item["type"] == "function_call":
            for index in self._calls.values():  # every call still open ends here
                call = self._items[index]
                if call["status"] == "completed":
                    continue
                call["status"] = "completed"
                arguments = {"item_id": call["id"], "output_index": index, "arguments": call["arguments"]}
                out.append(self._emit({"type": "response.function_call_arguments.done", **arguments}))
                out.append(
                    self._emit(
                        {"type": "response.output_item.done", "output_index": index, "item": dict(call)}
                    )
                )
        else:
            item["status"] = "completed"
            done = {
                "type": "response.output_item.done",
                "output_index": len(self._items) - 1,
                "item": dict(item),
            }
            out.append(self._emit(done))
        self._open = None
        return out


def error_event(message: str, code: str, sequence_number: int = 0) -> Payload:
    """The last event of a broken Responses stream (``event: error``); the openai client raises
    ``APIError`` on a payload with an ``error`` object."""
    return {
        "type": "error",
        "code": code,
        "message": message,
        "param": None,
        "sequence_number": sequence_number,
        "error": {"message": message, "type": "server_error", "param": None, "code": code},
    }
