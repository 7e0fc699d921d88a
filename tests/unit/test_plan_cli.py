"""`lpu plan` end to end through the CLI: table, JSON, SVG, overrides and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.cli import main


def test_table_for_llama_2_70b_on_576_chips(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model", "llama-2-70b", "--chips", "576", "--context", "4096"], env={}) == 0
    out = capsys.readouterr().out
    assert "llama-2-70b" in out and "576 chips = 72 nodes of 8 in 8 rack(s)" in out
    assert "8 x H100-SXM5-80GB server (FP16, TP8)" in out


def test_json_carries_the_same_answer_and_overrides_apply(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--model", "llama-3-8b", "--context", "2048", "--batch", "4", "--format", "json"]
    assert (
        main(
            [*argv, "--chip-price", "10000", "--power-price-kw-month", "100", "--gpu-precision", "fp8"],
            env={},
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    lpu = data["lpu"]
    assert data["request"] == {
        "context": 2048,
        "batch": 4,
        "prompt": 550,
        "chips": None,
        "max_num_batched_tokens": None,
    }
    assert lpu["chips"] == lpu["chips_needed"] and lpu["min_chips_weights_only"] < lpu["chips_needed"]
    host = 30_000 * lpu["nodes"]
    assert lpu["cost"]["purchase_usd"] == pytest.approx(10_000 * lpu["chips"] + host)
    assert data["power_price_usd_per_kw_month"] == 100 and data["gpu"]["precision"] == "fp8"
    assert data["lpu_over_gpu"]["per_user_tokens_per_s"] == pytest.approx(
        lpu["speed"]["per_user_tokens_per_s"] / data["gpu"]["speed"]["per_user_tokens_per_s"], rel=1e-3
    )


def test_chip_sram_override_and_svg_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    svg = tmp_path / "system.svg"
    assert main(["plan", "--model", "demo", "--chip-sram-mb", "8", "--svg", str(svg)], env={}) == 0
    assert svg.read_text().startswith("<svg") and "lpu-demo-untrained-13m" in svg.read_text()
    assert "8.4 MB SRAM each" in capsys.readouterr().out


def test_hf_config_json_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 2048,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "intermediate_size": 5632,
        "vocab_size": 32000,
        "max_position_embeddings": 2048,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert main(["plan", "--model", str(tmp_path / "config.json"), "--format", "json"], env={}) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"]["layers"] == 22 and data["model"]["params"] == 1_100_048_384


def test_mistral_nemo_config_with_head_dim_apart_from_hidden_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Mistral-Nemo-Instruct-2407's config.json: 32 heads of 128 in hidden 5120, so q_proj is (4096, 5120)."""
    cfg = {
        "architectures": ["MistralForCausalLM"],
        "hidden_size": 5120,
        "head_dim": 128,
        "intermediate_size": 14336,
        "max_position_embeddings": 1024000,
        "num_attention_heads": 32,
        "num_hidden_layers": 40,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "vocab_size": 131072,
    }
    folder = tmp_path / "Mistral-Nemo-Instruct-2407"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    argv = ["plan", "--model", str(folder), "--context", "8192"]
    assert main([*argv, "--format", "json"], env={}) == 0
    data = json.loads(capsys.readouterr().out)
    # the published 12.2B (with q as wide as hidden_size it would be 12.67B)
    assert data["model"]["params"] == 12_247_782_400
    # int8 matrices + an fp32 scale per output row (wq 4096, wk and wv 1024, wo 5120, w1 and w3 14336, w2
    # 5120 rows a layer; both vocabulary tables) + fp32 norms (3 bytes each more than their int8 count)
    scales = 4 * (40 * (4096 + 2 * 1024 + 5120 + 2 * 14336 + 5120) + 2 * 131072)
    assert data["lpu"]["weight_bytes"] == data["model"]["params"] + scales + 3 * (81 * 5120)
    lpu = data["lpu"]
    # a layer's 272.6 MB of int8 weights split over two chips by KV heads; every layer gets its own stage
    assert {(s["holds"], s["stages"], s["width"]) for s in lpu["layout"]} >= {("layer", 40, 2)}
    assert lpu["chips_used"] == lpu["chips"] >= lpu["min_chips_weights_only"] > 12.2e9 / 230.7e6
    assert 100 < lpu["speed"]["per_user_tokens_per_s"] < 2000 and 0 < lpu["speed"]["ttft_s"] < 1
    assert main(argv, env={}) == 0
    assert "Mistral-Nemo-Instruct-2407 (12.25B params, 40 layers); context 8,192" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "llama-2-70b", "--chips", "100"], "needs 404 x GroqChip1; --chips 100 is too few"),
        (
            ["--model", "demo", "--context", "2048", "--prompt", "5000"],
            "prompt (5000 tokens) must be shorter",
        ),
        (["--model", "demo", "--spec", "/nonexistent/spec.yaml"], "/nonexistent/spec.yaml: cannot read"),
        (["--model", "llama-2-7b", "--context", "8192"], "context 8,192 exceeds llama-2-7b's 4,096 tokens"),
    ],
)
def test_bad_input_is_one_clear_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", *argv], env={}) == 1
    err = capsys.readouterr().err
    assert err.startswith("lpu plan: ") and message in err and "Traceback" not in err


def test_a_non_number_flag_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["plan", "--model", "demo", "--batch", "many"], env={})
    assert info.value.code == 2 and "--batch: must be a positive integer" in capsys.readouterr().err


def test_the_prefill_chunk_comes_from_the_flag_or_the_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["plan", "--model", "mixtral-8x7b", "--format", "json"], env={}) == 0
    assert json.loads(capsys.readouterr().out)["lpu"]["prefill_chunk_tokens"] == 512
    env = {"LPU_MAX_NUM_BATCHED_TOKENS": "128"}
    assert main(["plan", "--model", "mixtral-8x7b", "--format", "json"], env=env) == 0
    assert json.loads(capsys.readouterr().out)["lpu"]["prefill_chunk_tokens"] == 128


def test_groq3_with_prefill_on_h100(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--model", "llama-3-70b", "--chip", "groq3", "--prefill-on", "h100", "--context", "8192"]
    assert main([*argv, "--format", "json"], env={}) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["lpu"]["chip"] == "Groq3-LP30" and data["lpu"]["weights"] == "fp8"
    assert data["lpu"]["nodes_per_rack"] * data["lpu"]["chips_per_node"] == 256
    assert data["prefill"]["server"] == "8 x H100-SXM5-80GB"
    assert data["lpu"]["speed"]["ttft_s"] == data["prefill"]["ttft_s"]
    assert main(argv, env={"LPU_CHIP": "groqchip1"}) == 0  # the flag wins over the environment
    out = capsys.readouterr().out
    assert "Groq3-LP30 system" in out and "Prefill on 8 x H100-SXM5-80GB" in out and "KV to the LPUs" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "llama-2-70b", "--weights", "fp8"], "GroqChip1 has no FP8 matrix units"),
        (["--model", "llama-3.3-70b", "--chips", "600"], "a context of 65,536 tokens fits: --context 65536"),
    ],
)
def test_fp8_needs_fp8_units_and_a_shorter_context_is_named_when_it_fits(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", *argv], env={}) == 1
    assert message in capsys.readouterr().err
