"""A tiny GGUF model that the real llama-server loads in well under a second, for tests against it.

    write_tiny_gguf(tmp_path / "tiny.gguf")          # or: python -m tests.support.tiny_gguf OUT.gguf

A llama-architecture model (2 layers, n_embd 64, 4 heads, n_ff 128, trained context 256, f32) with a
SentencePiece-style vocabulary ("llama" tokenizer): <unk>, <s>, </s>, the ChatML markers, the 256 byte
tokens <0x00>..<0xFF> (so any text tokenizes) and a few hundred word pieces. A ChatML chat template is
embedded, so /v1/chat/completions needs no --chat-template.

The weights are not random: every token embeds to the same vector, the attention and feed-forward outputs
are zero (the residual stream carries the embedding through unchanged), and the output projection scores
one token, ``REPLY_PIECE``, far above all others. Whatever the prompt and whatever the sampler, the model
answers ``REPLY_WORD`` repeated until max_tokens: a test can assert on the text the server generated.

Needs the ``gguf`` package (and numpy, which it depends on); a test imports this module only after
``pytest.importorskip("gguf")``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np

N_LAYERS = 2
N_EMBD = 64
N_HEAD = 4
N_FF = 128
CONTEXT_LENGTH = 256
RMS_EPS = 1e-5

#: the word the model says, again and again
REPLY_WORD = "tiny"
REPLY_PIECE = "\u2581" + REPLY_WORD  # SentencePiece marks a leading space with U+2581
#: gap between the reply token's logit and every other's: no sampler picks anything else
REPLY_LOGIT = float(N_EMBD)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_SPECIAL = (
    ("<unk>", gguf.TokenType.UNKNOWN),
    ("<s>", gguf.TokenType.CONTROL),
    ("</s>", gguf.TokenType.CONTROL),
    ("<|im_start|>", gguf.TokenType.CONTROL),
    ("<|im_end|>", gguf.TokenType.CONTROL),
)
_WORDS = (
    "the of and to in is it you that he was for on are with as his they be at one have this from or had "
    "by hot word but what some we can out other were all there when up use your how said an each she "
    "which do their time if will way about many then them write would like so these her long make thing "
    "see him two has look more day could go come did number sound no most people my over know water than "
    "call first who may down side been now find any new work part take get place made live where after "
    "back little only round man year came show every good me give our under name very through just form "
    "hello hi user assistant system tiny model llama gateway test"
)


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """The tokens, their scores (higher merges first) and their types, in id order."""
    tokens = [text for text, _ in _SPECIAL]
    types = [int(kind) for _, kind in _SPECIAL]
    tokens += [f"<0x{byte:02X}>" for byte in range(256)]
    types += [int(gguf.TokenType.BYTE)] * 256
    pieces = ["\u2581", *(chr(c) for c in range(ord("a"), ord("z") + 1))]
    pieces += [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    pieces += list("0123456789.,!?'-:;()")
    # every prefix of every word, so that the tokenizer's pairwise merges can build the whole word
    words = ["\u2581" + word for word in _WORDS.split()]
    pieces += list(dict.fromkeys(word[:end] for word in words for end in range(2, len(word) + 1)))
    tokens += pieces
    types += [int(gguf.TokenType.NORMAL)] * len(pieces)
    # SentencePiece scores: longer pieces score higher, so whole words win over their letters
    scores = [0.0] * (len(tokens) - len(pieces)) + [float(len(piece)) for piece in pieces]
    return tokens, scores, types


def write_tiny_gguf(path: Path) -> Path:
    """Write the model to ``path`` (replacing any file there) and return ``path``."""
    tokens, scores, types = vocabulary()
    n_vocab = len(tokens)
    reply = tokens.index(REPLY_PIECE)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("gatewayd tiny test model")
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYERS)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(n_vocab)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(tokens.index("<unk>"))
    writer.add_bos_token_id(tokens.index("<s>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    # numpy shapes are ggml's dimensions reversed: a {n_embd, n_vocab} tensor is (n_vocab, n_embd)
    def zeros(*shape: int) -> np.ndarray:
        return np.zeros(shape, dtype=np.float32)

    def ones(*shape: int) -> np.ndarray:
        return np.ones(shape, dtype=np.float32)

    output = zeros(n_vocab, N_EMBD)
    output[reply, :] = REPLY_LOGIT / N_EMBD  # the normalised hidden state is all ones
    writer.add_tensor("token_embd.weight", ones(n_vocab, N_EMBD))
    writer.add_tensor("output_norm.weight", ones(N_EMBD))
    writer.add_tensor("output.weight", output)
    for layer in range(N_LAYERS):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", ones(N_EMBD))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{block}.{name}.weight", zeros(N_EMBD, N_EMBD))
        writer.add_tensor(f"{block}.ffn_norm.weight", ones(N_EMBD))
        writer.add_tensor(f"{block}.ffn_gate.weight", zeros(N_FF, N_EMBD))
        writer.add_tensor(f"{block}.ffn_up.weight", zeros(N_FF, N_EMBD))
        writer.add_tensor(f"{block}.ffn_down.weight", zeros(N_EMBD, N_FF))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.support.tiny_gguf OUT.gguf")
    print(write_tiny_gguf(Path(sys.argv[1])))
