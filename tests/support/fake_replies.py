"""What the fake model server says: deterministic reply text, token counts and embedding vectors.

Pure functions, no IO, so a test can compute the exact answer it expects from the fake.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Mapping, Sequence
from typing import Any

REPLY_PREFIX = "fake reply to: "


def reply_text(prompt: str) -> str:
    """The whole completion the fake gives for ``prompt``."""
    return REPLY_PREFIX + prompt


def infill_text(prefix: str, suffix: str) -> str:
    """The middle the fake fills in between ``prefix`` and ``suffix`` (a prefix-only answer differs)."""
    return reply_text(f"{prefix} [...] {suffix}")


#: the log probability the fake gives the token it chose, and the one it gives each alternative
CHOSEN_LOGPROB = -0.25
ALTERNATIVE_LOGPROB = -3.5


def piece_logprobs(piece: str, top: int) -> dict[str, Any]:
    """The logprobs entry of one piece (the fake's token), in the shape OpenAI and Ollama share:
    ``{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}, ...]}`` with
    ``top`` alternatives, the chosen token first."""
    alternatives = [{"token": piece, "logprob": CHOSEN_LOGPROB, "bytes": list(piece.encode())}]
    alternatives += [
        {"token": f"alt{i}", "logprob": ALTERNATIVE_LOGPROB, "bytes": list(f"alt{i}".encode())}
        for i in range(1, top)
    ]
    return {
        "token": piece,
        "logprob": CHOSEN_LOGPROB,
        "bytes": list(piece.encode()),
        "top_logprobs": alternatives[:top],
    }


def split_chunks(text: str, chunks: int) -> list[str]:
    """``text`` cut into exactly ``chunks`` consecutive pieces of near-equal length (some may be empty).

    ``"".join(split_chunks(t, n)) == t`` always holds.
    """
    if chunks < 1:
        raise ValueError(f"chunks must be at least 1, got {chunks}")
    length = len(text)
    return [text[i * length // chunks : (i + 1) * length // chunks] for i in range(chunks)]


def word_count(text: str) -> int:
    """The fake's tokenizer: prompt tokens are whitespace-separated words."""
    return len(text.split())


def content_text(content: Any) -> str:
    """The text of an OpenAI message ``content``: a string, or a list of parts whose text parts are joined
    with a space. Anything else gives ``""``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)
        ]
        return " ".join(texts)
    return ""


def last_user_text(messages: Sequence[Any]) -> str:
    """The text of the last message with role ``user``; ``""`` when there is none."""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def prompt_text(prompt: Any) -> str:
    """The text of a completions ``prompt``: a string, the first of a list of strings, or token ids
    rendered as space-separated numbers."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, str):
            return first
        if isinstance(first, int):
            return " ".join(str(token) for token in prompt)
        if isinstance(first, list):
            return " ".join(str(token) for token in first)
    return ""


def embedding_inputs(value: Any) -> list[str]:
    """The texts to embed from an OpenAI ``input`` / Ollama ``input``: a string, a list of strings, a list of
    token ids (one input) or a list of token-id lists. Token ids are rendered as space-separated numbers."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if value and all(isinstance(item, int) for item in value):
            return [" ".join(str(token) for token in value)]
        texts: list[str] = []
        for item in value:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, list):
                texts.append(" ".join(str(token) for token in item))
            else:
                raise ValueError("input items must be strings or token arrays")
        return texts
    raise ValueError("input must be a string or an array")


def embedding_vector(text: str, dim: int) -> list[float]:
    """A deterministic vector of ``dim`` floats in [-1, 1) derived from SHA-256 of ``text``.

    Every value is exactly representable as float32, so the float and base64 encodings decode to the same
    numbers.
    """
    values: list[float] = []
    block = 0
    while len(values) < dim:
        digest = hashlib.sha256(f"{block}:{text}".encode()).digest()
        for (word,) in struct.iter_unpack("<I", digest):
            raw = word / 2**32 * 2.0 - 1.0
            values.append(struct.unpack("<f", struct.pack("<f", raw))[0])
        block += 1
    return values[:dim]


def encode_base64_float32(vector: Sequence[float]) -> str:
    """The OpenAI ``encoding_format: "base64"`` form: little-endian float32, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
