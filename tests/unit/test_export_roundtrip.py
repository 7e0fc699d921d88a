"""`lpu export` round trips: a GGUF, a llama2.c checkpoint and the demo model written as HuggingFace
directories (vocabularies converted to tokenizer.json, templates kept in tokenizer_config.json) are served
back with the same tokens, template, weights and greedy text as their source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tokenizers

from lpu_runtime.catalog import LoadedModel, load_model
from lpu_runtime.compiler import compile_model
from lpu_runtime.config import DEMO_MODEL, EngineConfig, SystemSpec
from lpu_runtime.executor import PipelineExecutor
from lpu_runtime.loaders.assets import ServedTokenizer
from lpu_runtime.loaders.export import export_model
from lpu_runtime.tokenizer import encode_prompt
from lpu_runtime.tokenizers.hf import HFTokenizer
from tests.shared_models import require
from tests.unit.test_loaders_formats import greedy

SOURCES = ["stories260K-gguf/stories260K-q8_0.gguf", "stories260K/stories260K.bin", DEMO_MODEL.name]
TEXT = "Once upon a time, Lily said <s>héllo</s> to 日本 \n\n  twice"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story."}]


def _source(name: str) -> str:
    return name if name == DEMO_MODEL.name else str(require(name))


def _greedy(loaded: LoadedModel, prompt: list[int], n: int) -> list[int]:
    checkpoint = loaded.source.open()
    engine = EngineConfig(max_num_seqs=1, max_num_batched_tokens=64)
    executor = PipelineExecutor(compile_model(checkpoint.config, SystemSpec(1), engine), checkpoint)
    return greedy(lambda batch: executor.execute(batch).logits, prompt, n)


@pytest.mark.parametrize("name", SOURCES, ids=lambda n: Path(n).name)
def test_an_export_serves_the_same_greedy_text_as_its_source(name: str, tmp_path: Path) -> None:
    source = load_model(_source(name))
    written = export_model(_source(name), tmp_path / "export")
    assert {p.name for p in written} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    export = load_model(str(tmp_path / "export"))
    assert isinstance(export.tokenizer, ServedTokenizer) and isinstance(export.tokenizer.inner, HFTokenizer)

    a, b = source.tokenizer, export.tokenizer
    assert (b.bos_id, b.eos_ids, b.adds_bos, b.vocab_size) == (a.bos_id, a.eos_ids, a.adds_bos, a.vocab_size)
    assert b.encode(TEXT, add_bos=True) == a.encode(TEXT, add_bos=True)
    assert b.decode(a.encode(TEXT, add_bos=False)) == a.decode(a.encode(TEXT, add_bos=False))
    if source.chat_template is None:
        assert export.chat_template is None
        prompt = encode_prompt(a, "Once upon a time")
    else:
        assert export.chat_template is not None
        rendered = source.chat_template.render(MESSAGES)
        assert export.chat_template.render(MESSAGES) == rendered
        prompt = encode_prompt(a, rendered)
        assert encode_prompt(b, rendered) == prompt

    want = _greedy(source, prompt, 24)
    assert _greedy(export, prompt, 24) == want
    assert b.decode(want) == a.decode(want)


def test_the_exported_tokenizer_is_what_huggingface_tooling_reads(tmp_path: Path) -> None:
    """What transformers' PreTrainedTokenizerFast reads: tokenizer.json through the library itself, and the
    special tokens and template in tokenizer_config.json."""
    export_model(str(require("stories260K-gguf/stories260K-q8_0.gguf")), tmp_path / "export")
    library = tokenizers.Tokenizer.from_file(str(tmp_path / "export" / "tokenizer.json"))
    golden = json.loads(require("golden/stories260K.json").read_text())["chat_template_example"]
    assert (
        library.encode(golden["rendered"], add_special_tokens=False).ids
        == golden["prompt_ids_add_special_tokens_false"]
    )
    assert library.encode("Hello", add_special_tokens=True).ids[0] == 1  # the post-processor writes BOS
    config = json.loads((tmp_path / "export" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (config["bos_token"], config["eos_token"], config["add_bos_token"]) == ("<s>", "</s>", True)
    assert config["chat_template"].startswith("{{ bos_token }}")
    model_config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert model_config["architectures"] == ["LlamaForCausalLM"] and model_config["vocab_size"] == 512
    np.testing.assert_array_equal(
        load_model(str(tmp_path / "export")).source.open().tensor("layers.2.wq"),
        load_model(str(require("stories260K-gguf/stories260K-q8_0.gguf")))
        .source.open()
        .tensor("layers.2.wq"),
    )
