"""`lpu serve` on the real stories260K files, talked to through the OpenAI SDK as users do.

Each server starts once for this module. At temperature 0 the int8 LPU path writes the golden 30-token
greedy completion of the chat example as far as test_loaders_formats.py measures for its file and kernels
(HF and llama2.c fp32: all 30 ids; GGUF Q8_0: 20 with the native kernels, 30 with numpy's), and no further.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest

from lpu_runtime.backend import default_backend
from lpu_runtime.catalog import load_model
from tests.e2e.support import Server, running_server
from tests.shared_models import require
from tests.unit.test_loaders_formats import FORMATS


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(require("golden/stories260K.json").read_text())
    return data


def _serve(tmp: pytest.TempPathFactory, model: Path, args: Sequence[str] = ()) -> Iterator[Server]:
    """A server for `model`, which it serves under the directory name or the file name without extension."""
    served = model.name if model.is_dir() else model.stem
    with running_server(tmp.mktemp(model.name), served, ["--model", str(model), *args]) as server:
        yield server


@pytest.fixture(scope="module")
def hf_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _serve(tmp_path_factory, require("stories260K-hf"))


@pytest.fixture(scope="module")
def gguf_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _serve(tmp_path_factory, require("stories260K-gguf/stories260K-q8_0.gguf"))


@pytest.fixture(scope="module")
def llama2c_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The legacy .bin has neither tokenizer nor template: both come from flags."""
    template = tmp_path_factory.mktemp("template") / "stories.jinja"
    config = json.loads(require("stories260K-hf/tokenizer_config.json").read_text())
    template.write_text(config["chat_template"])
    args = ["--tokenizer", str(require("stories260K/tok512.bin")), "--chat-template", str(template)]
    yield from _serve(tmp_path_factory, require("stories260K/stories260K.bin"), args)


@pytest.fixture(scope="module")
def untemplated_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """llama.cpp's F32 stories260K.gguf carries a vocabulary but no chat template."""
    yield from _serve(tmp_path_factory, require("stories260K-gguf/stories260K.gguf"))


def _client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=60)


def _streamed_chat(server: Server, golden: dict[str, Any]) -> tuple[str, str | None, int]:
    example = golden["chat_template_example"]
    stream = _client(server).chat.completions.create(
        model=server.model,
        messages=example["messages"],
        temperature=0,
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, completion_tokens = "", None, 0
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            completion_tokens = chunk.usage.completion_tokens
            assert chunk.usage.prompt_tokens == len(example["prompt_ids_add_special_tokens_false"])
    return text, finish, completion_tokens


SERVED_FILES = {
    "hf_server": "stories260K-hf",
    "gguf_server": "stories260K-gguf/stories260K-q8_0.gguf",
    "llama2c_server": "stories260K/stories260K.bin",
}


@pytest.mark.parametrize("fixture", list(SERVED_FILES))
def test_streamed_chat_at_temperature_0_writes_the_golden_completion(
    fixture: str, golden: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    server: Server = request.getfixturevalue(fixture)
    text, finish, n = _streamed_chat(server, golden)
    path = SERVED_FILES[fixture]
    horizon = next(f for f in FORMATS if f.path == path).int8_horizons[default_backend().name][1]
    ids = golden["chat_template_example"]["greedy_30_generated_ids"]
    decode = load_model(str(require("stories260K-hf"))).tokenizer.decode
    # The completion continues "Assistant:", so its first piece "▁Sara" streams as " Sara"; the golden text
    # is the ids decoded on their own, where SentencePiece drops the leading space.
    assert text.startswith(" " + decode(ids[:horizon]))
    if horizon < len(ids):
        assert not text.startswith(" " + decode(ids[: horizon + 1]))
    else:
        assert text == " " + golden["chat_template_example"]["greedy_30_text"]
    assert (finish, n) == ("length", 30)


def test_models_endpoint_says_what_is_served(hf_server: Server, gguf_server: Server) -> None:
    for server, name, kind in (
        (hf_server, "stories260K-hf", "HuggingFace"),
        (gguf_server, "stories260K-q8_0", "GGUF"),
    ):
        (model,) = _client(server).models.list().data
        assert model.id == name
        extra: dict[str, Any] = model.model_extra or {}
        assert kind in extra["description"] and "5 layers, dim 64" in extra["description"]
        assert extra["max_model_len"] == 512
    # The id before file extensions were dropped stays accepted; responses name the served id.
    old = _client(gguf_server).completions.create(model="stories260K-q8_0.gguf", prompt="Once", max_tokens=2)
    assert old.model == "stories260K-q8_0"
    assert _client(gguf_server).models.retrieve("stories260K-q8_0.gguf").id == "stories260K-q8_0"
    with pytest.raises(openai.NotFoundError):
        _client(gguf_server).completions.create(model="stories260K-q8_0.bin", prompt="Once", max_tokens=2)


def test_a_model_without_a_chat_template_refuses_chat_but_completes(
    untemplated_server: Server, golden: dict[str, Any]
) -> None:
    client = _client(untemplated_server)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=untemplated_server.model, messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
    assert "no chat template" in str(info.value)
    once = golden["once_upon_a_time_greedy_64"]
    completion = client.completions.create(
        model=untemplated_server.model, prompt=once["prompt"], temperature=0, max_tokens=20
    )
    assert completion.usage is not None and completion.usage.prompt_tokens == len(once["prompt_ids"])
    assert golden_prefix(once["text"], once["prompt"] + completion.choices[0].text)


def golden_prefix(full: str, produced: str) -> bool:
    return len(produced) > len("Once upon a time") + 40 and full.startswith(produced)
