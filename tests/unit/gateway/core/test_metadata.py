"""Reading model metadata from the backends' own answers, and serving it without making anything up."""

from __future__ import annotations

from gatewayd.gateway.core.metadata import (
    ModelInfo,
    from_llama_props,
    from_ollama_show,
    from_ollama_tag,
    from_openai_model,
    human_number,
    model_digest,
    ollama_show,
    ollama_tag,
    openai_fields,
)


def test_ollama_show_gives_capabilities_and_the_architectures_context_length() -> None:
    info = from_ollama_show(
        {
            "template": "{{ .Tools }}",
            "details": {"family": "qwen2", "families": ["qwen2"], "parameter_size": "7.6B", "format": "gguf"},
            "model_info": {"general.architecture": "qwen2", "qwen2.context_length": 32768, "x": 1},
            "capabilities": ["completion", "tools"],
        }
    )
    assert info.capabilities == ("completion", "tools")
    assert info.context_length == 32768
    assert info.family == "qwen2"
    shown = ollama_show(info)
    assert shown["model_info"]["qwen2.context_length"] == 32768  # Ollama's own, as it gave it
    assert shown["capabilities"] == ["completion", "tools"]


def test_ollama_tag_keeps_only_what_was_given() -> None:
    info = from_ollama_tag(
        {"name": "m", "size": 0, "digest": "", "details": {"family": "", "format": "gguf"}}
    )
    assert info == ModelInfo(format="gguf")
    digest = model_digest("m")
    details = {"format": "gguf"}
    assert ollama_tag("m", info) == {"name": "m", "model": "m", "digest": digest, "details": details}
    assert ollama_tag("m", None) == {"name": "m", "model": "m", "digest": digest, "details": {}}


def test_every_listed_model_has_a_digest_an_ollamas_own_or_one_made_from_its_name() -> None:
    # sha256 of "gatewayd/qwen3:8b", in hex: the same on every instance and after every restart
    assert model_digest("qwen3:8b") == "ede9c75f59092d71dc0fc0ac2a0ede427ddbe9f67c392e820ca69309a7b188c9"
    assert ollama_tag("a", ModelInfo(digest="abc123"))["digest"] == "abc123"  # an Ollama's own is kept
    assert ollama_tag("a", ModelInfo(size=5))["digest"] == model_digest("a")


def test_openai_listings_context_fields() -> None:
    assert from_openai_model({"id": "v", "max_model_len": 8192}).context_length == 8192
    assert from_openai_model({"id": "o", "context_length": 128000}).context_length == 128000
    assert from_openai_model({"id": "g", "context_window": 131072}).context_length == 131072
    llama = from_openai_model(
        {"id": "l", "meta": {"n_ctx_train": 4096, "n_params": 7_615_616_512, "size": 9}}
    )
    assert (llama.context_length, llama.parameter_size, llama.size) == (4096, "7.6B", 9)
    assert from_openai_model({"id": "plain", "owned_by": "openai"}).empty
    assert openai_fields(None) == {}


def test_llama_props() -> None:
    info = from_llama_props(
        {
            "default_generation_settings": {"n_ctx": 8192},
            "modalities": {"vision": True, "audio": False},
            "chat_template": "{{ messages }}",
            "chat_template_caps": {"supports_tools": True},
        }
    )
    assert info.context_length == 8192
    assert info.capabilities == ("completion", "tools", "vision")
    assert from_llama_props(
        {"chat_template": "", "chat_template_caps": {"supports_tools": False}}
    ).capabilities == ("completion",)
    assert from_llama_props({}).empty


def test_a_description_takes_precedence_over_the_listing() -> None:
    described = ModelInfo(context_length=4096, capabilities=("completion",))
    listed = ModelInfo(context_length=32768, size=10)
    assert described.merged(listed) == ModelInfo(context_length=4096, capabilities=("completion",), size=10)


def test_human_number_writes_like_ollama() -> None:
    assert [human_number(n) for n in (8_000_000_000, 7_615_616_512, 135_000_000, 22_500_000, 22_000, 7)] == [
        "8B",
        "7.6B",
        "135M",
        "22.50M",
        "22K",
        "7",
    ]
