"""`--model` resolution: demo, synthetic presets, local paths of every format, hub ids; and start-up errors."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lpu_runtime.async_engine import AsyncEngine
from lpu_runtime.catalog import accepted_ids, can_serve, compile_plan, load_model, model_config
from lpu_runtime.config import DEMO_MODEL, MODEL_PRESETS, EngineConfig, SystemSpec
from lpu_runtime.core_client import InprocCoreClient
from lpu_runtime.errors import CompileError, ModelFileError
from lpu_runtime.executor import LoadStep
from lpu_runtime.loaders.assets import ServedTokenizer
from lpu_runtime.loaders.progress import LoadProgress
from lpu_runtime.tokenizer import ByteTokenizer
from lpu_runtime.types import FinishReason, GenerationRequest, SamplingParams
from server.cli import main
from tests.shared_models import PROJECT_ROOT, require


def test_demo_aliases_still_resolve_to_the_embedded_model() -> None:
    for alias in ("demo", "default", DEMO_MODEL.name):
        loaded = load_model(alias)
        assert loaded.name == DEMO_MODEL.name and loaded.config == DEMO_MODEL
        assert loaded.chat_template is not None


@pytest.mark.parametrize(
    ("relative", "served", "kind", "has_template"),
    [
        ("stories260K-hf", "stories260K-hf", "HuggingFace safetensors", True),
        ("stories260K-gguf/stories260K-q8_0.gguf", "stories260K-q8_0", "GGUF", True),
        ("stories260K-gguf/stories260K.gguf", "stories260K", "GGUF", False),
        ("stories260K/stories260K.bin", "stories260K", "llama2.c", False),
    ],
)
def test_a_path_is_served_under_its_own_name_and_says_what_it_is(
    relative: str, served: str, kind: str, has_template: bool
) -> None:
    path = require(relative)
    loaded = load_model(str(path))
    assert loaded.name == served  # a file's name without its extension; requests may still name the file
    assert accepted_ids(str(path)) == ((served,) if path.is_dir() else (served, path.name))
    assert kind in loaded.description and str(path) in loaded.description
    assert (loaded.chat_template is not None) == has_template
    assert ("chat template: none" in loaded.description) != has_template
    assert loaded.tokenizer.eos_ids == frozenset({2}) and loaded.tokenizer.bos_id == 1
    assert loaded.tokenizer.encode("Once upon a time", add_bos=True) == [1, 403, 407, 261, 378]
    # model_config reads the architecture without the weights
    cfg = model_config(str(path))
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (64, 5, 8, 4, 512)
    assert can_serve(str(path))


def test_llama2c_tokenizer_is_found_beside_the_checkpoint_or_given(tmp_path: Path) -> None:
    loaded = load_model(str(require("stories260K/stories260K_q80.bin")))
    assert "tok512.bin" in loaded.description
    template = tmp_path / "t.jinja"
    template.write_text("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    given = load_model(
        str(require("stories260K/stories260K.bin")),
        tokenizer=str(require("stories260K-hf/tokenizer.json")),
        chat_template=str(template),
    )
    assert "tokenizer.json" in given.description and str(template) in given.description
    assert given.chat_template is not None
    assert given.chat_template.render([{"role": "user", "content": "hi"}]) == "<s>hi"


def test_synthetic_presets_have_the_real_shape_and_never_materialise_the_model() -> None:
    loaded = load_model("synthetic:llama-2-7b")
    preset = MODEL_PRESETS["llama-2-7b"]
    cfg = loaded.config
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.ffn_dim, cfg.vocab_size) == (
        preset.dim, preset.n_layers, preset.n_heads, preset.ffn_dim, preset.vocab_size,
    )  # fmt: skip
    assert loaded.name == "synthetic:llama-2-7b" and "byte-level" in loaded.description
    # one tensor on demand, of its shape; deterministic per (seed, name)
    w = loaded.source.open().tensor("layers.31.w2")
    assert w.shape == (preset.dim, preset.ffn_dim) and w.dtype == np.float32
    norm = loaded.source.open().tensor("layers.31.ffn_norm")
    np.testing.assert_array_equal(
        norm, load_model("synthetic:llama-2-7b").source.open().tensor("layers.31.ffn_norm")
    )
    other_seed = load_model("synthetic:llama-2-7b", seed=1).source.open().tensor("layers.31.ffn_norm")
    assert not np.array_equal(norm, other_seed)
    # the byte tokenizer's 259 ids sit inside the 32000-row head; the rest decode to nothing
    assert loaded.tokenizer.vocab_size == 32000 and loaded.tokenizer.token_bytes(31999) == b""
    assert (
        can_serve("synthetic:llama-2-70b") and not can_serve("synthetic:nope") and not can_serve("llama-2-7b")
    )
    assert model_config("synthetic:llama-2-70b").n_layers == 80


def test_synthetic_with_a_real_tokenizer() -> None:
    loaded = load_model("synthetic:tinyllama-1.1b", tokenizer=str(require("llama2-tokenizer/tokenizer.bin")))
    assert loaded.tokenizer.vocab_size == 32000
    assert loaded.tokenizer.encode("Hello", add_bos=True)[0] == 1
    assert "tokenizer.bin" in loaded.description


def test_unknown_names_and_missing_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="synthetic:<preset>"):
        load_model("no-such-model")
    # a path that is not there says so, even when it reads like a hub id (`models/x.gguf`)
    for missing in (str(tmp_path / "absent.gguf"), "models/absent.gguf", "./absent"):
        with pytest.raises(ModelFileError, match=f"^{re.escape(missing)}: no such file or directory$"):
            load_model(missing)
        with pytest.raises(ModelFileError, match="no such file or directory"):
            model_config(missing)
        assert not can_serve(missing)
    with pytest.raises(KeyError, match="unknown model preset"):
        load_model("synthetic:no-such-preset")


def test_mixture_of_experts_presets_load_as_synthetic_models() -> None:
    loaded = load_model("synthetic:tiny-mixtral")
    assert loaded.config.n_experts == 8 and loaded.config.n_experts_per_token == 2
    assert loaded.source.open().tensor("layers.0.w1").shape == (8 * loaded.config.ffn_dim, loaded.config.dim)


def test_padded_vocabulary_decodes_extra_rows_to_nothing() -> None:
    tok = ServedTokenizer(ByteTokenizer(), 300, extra_eos_ids=(299, 5000))
    assert tok.vocab_size == 300 and tok.eos_ids == frozenset({ByteTokenizer.EOS_ID, 299})
    assert tok.token_bytes(280) == b"" and tok.token_bytes(65) == b"A"
    assert tok.decode([72, 105, 290]) == "Hi"


def test_tokenizer_larger_than_the_model_is_refused() -> None:
    with pytest.raises(ModelFileError, match="tokenizer has 32000 tokens but the model's vocabulary is 512"):
        load_model(str(require("stories260K-hf")), tokenizer=str(require("llama2-tokenizer/tokenizer.bin")))


def test_progress_is_a_live_line_on_a_terminal_and_log_lines_otherwise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    steps = [LoadStep(f"t{i}", 1_000_000, i, 8, i // 4, 2) for i in range(1, 9)]
    tty = Tty()
    live = LoadProgress("m", tty)
    for step in steps:
        live(step)
    text = tty.getvalue()
    assert text.startswith("\r\033[Kloading m: 1.0 MB read, 1/8 tensors quantized, 0/2 chips filled")
    assert "8.0 MB read, 8/8 tensors quantized, 2/2 chips filled" in text and text.endswith("\n")
    caplog.set_level("INFO", logger="lpu_runtime.loaders.progress")
    quiet = io.StringIO()
    logged = LoadProgress("m", quiet)
    for step in steps:
        logged(step)
    assert quiet.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and "8/8 tensors quantized, 2/2 chips filled" in lines[-1]


def test_serve_refuses_a_bad_file_in_one_line_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(3))
    assert main(["serve", "--model", str(bad)], env={}) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lpu serve: {bad}: ") and "truncated" in err and "\n" not in err
    assert main(["serve", "--model", "llama-2-7b"], env={}) == 2
    assert "synthetic:llama-2-7b" in capsys.readouterr().err


def test_hub_ids_offline_say_how_to_pass_a_local_path(tmp_path: Path) -> None:
    """huggingface_hub reads HF_HUB_OFFLINE when imported, so this runs in a fresh process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    env = {k: v for k, v in env.items() if not k.startswith("LPU_")}
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--model", "HuggingFaceTB/SmolLM2-135M-Instruct"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    err = result.stderr.strip().splitlines()[-1]  # after the log line saying what it tries
    assert err.startswith("lpu serve: HuggingFaceTB/SmolLM2-135M-Instruct: cannot be fetched"), result.stderr
    assert "`hf download HuggingFaceTB/SmolLM2-135M-Instruct --local-dir SmolLM2-135M-Instruct`" in err
    assert "lpu serve --model /path/to/SmolLM2-135M-Instruct" in err


def test_serve_refuses_a_model_that_does_not_fit_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--model", "synthetic:tinyllama-1.1b", "--chips", "1"], env={}) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lpu serve: synthetic:tinyllama-1.1b does not fit on 1 x") and "\n" not in err


def test_a_plan_larger_than_host_memory_is_refused_before_any_weight_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lpu_runtime import compiler

    plan = compiler.compile_model(model_config("synthetic:tinyllama-1.1b"), SystemSpec(8), EngineConfig(4))
    pages = {"SC_PHYS_PAGES": 2**18, "SC_PAGE_SIZE": 4096}  # a 1 GiB machine
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    with pytest.raises(CompileError, match=r"needs [\d.]+ GiB of host memory .* has 1.0 GiB; `lpu compile"):
        compiler.check_host_memory(plan)


def test_eos_ids_of_generation_config_end_generation_with_stop(tmp_path: Path) -> None:
    """Chat models list several EOS ids in generation_config.json (Llama 3: <|end_of_text|>, <|eot_id|>);
    each of them ends generation with finish_reason "stop"."""
    golden = json.loads(require("golden/stories260K.json").read_text())["once_upon_a_time_greedy_64"]
    directory = tmp_path / "stories"
    shutil.copytree(require("stories260K-hf"), directory)
    directory.chmod(0o755)
    period = golden["generated_ids"][10]  # the "." ending "...named Lily."
    generation = directory / "generation_config.json"
    generation.chmod(0o644)
    generation.write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, period]}))
    served = AsyncEngine.create(str(directory), SystemSpec(2), EngineConfig(max_num_seqs=2), in_process=True)
    assert served.model.tokenizer.eos_ids == frozenset({2, period})
    assert isinstance(served.core, InprocCoreClient)
    engine = served.core.engine
    request = GenerationRequest(
        "r", tuple(golden["prompt_ids"]), SamplingParams(temperature=0.0, max_tokens=50)
    )
    engine.add(engine.make_sequence(request))
    outs = []
    while engine.has_work():
        outs.extend(engine.step())
    ids = [t for o in outs for t in o.new_token_ids]
    assert ids == golden["generated_ids"][:11] and outs[-1].finish_reason is FinishReason.STOP


def test_max_model_len_serves_a_shorter_context_with_less_kv(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(require("stories260K-hf"))
    assert load_model(path, max_context=128).config.max_context == 128
    full = compile_plan(path, SystemSpec(1), EngineConfig(4))
    short = compile_plan(path, SystemSpec(1), EngineConfig(4), max_context=128)
    assert short.model.max_context == 128 and short.kv_tokens < full.kv_tokens
    assert main(["serve", "--model", path, "--max-model-len", "1000"], env={}) == 1
    assert (
        "--max-model-len 1000 must be between 1 and stories260K-hf's context of 512"
        in capsys.readouterr().err
    )
