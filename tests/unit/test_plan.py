"""The planner: the seed analysis's arithmetic, chip counts from the compiler, model files and hardware specs."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lpu_runtime.catalog import compile_plan
from lpu_runtime.compiler import compile_model
from lpu_runtime.config import DEMO_MODEL, MODEL_PRESETS, EngineConfig, SystemSpec
from lpu_runtime.errors import CompileError
from lpu_runtime.hardware import (
    HardwareSpec,
    SpecError,
    chip_hardware,
    gpu_server,
    load_spec,
    min_cards_for_bytes,
    ownership_cost,
)
from lpu_runtime.plan import (
    PlanInputError,
    PlanRequest,
    model_from_hf_config,
    plan_system,
    render_table,
    resolve_model,
    shorter_context_that_fits,
    sram_fill,
    stored_weight_bytes,
    to_dict,
)
from lpu_runtime.plan_svg import render_svg

LLAMA_70B = MODEL_PRESETS["llama-2-70b"]


def test_the_seed_analysis_arithmetic_is_reproduced_exactly() -> None:
    assert min_cards_for_bytes(70e9, 230e6) == 305  # 70B params, int8, 230 MB cards
    lpu = ownership_cost(572, 20_000, 185, 185, power_price_usd_per_kw_month=200)
    assert lpu.purchase_usd == 11_440_000
    assert lpu.avg_power_kw == pytest.approx(105.82)
    assert lpu.power_usd_per_year == pytest.approx(253_968)  # "about $254k a year"
    assert lpu.power_usd(3) == pytest.approx(761_904)  # "$762k over three years"
    gpu = ownership_cost(1, 300_000, 10_000, 10_000, power_price_usd_per_kw_month=200)
    assert gpu.power_usd_per_year == pytest.approx(24_000)
    assert gpu.power_usd(3) == pytest.approx(72_000)
    assert gpu.total_usd(3) == pytest.approx(372_000)


def test_llama_2_70b_needs_more_chips_than_its_weights_alone_and_the_count_compiles() -> None:
    report = plan_system(PlanRequest(LLAMA_70B, context=4096))
    lpu = report.lpu
    assert lpu.weight_bytes == stored_weight_bytes(LLAMA_70B) and 69e9 < lpu.weight_bytes < 69.1e9
    assert lpu.min_chips_weights == 300  # the real 230,686,720-byte SRAM and Llama-2-70B's 68.98B params
    assert lpu.min_chips_weights < lpu.chips_needed == lpu.plan.n_chips_used
    assert lpu.plan.kv_tokens >= 4096
    assert lpu.nodes == -(-lpu.chips_needed // 8) and lpu.racks == -(-lpu.nodes // 9)
    with pytest.raises(CompileError, match="too few"):
        plan_system(PlanRequest(LLAMA_70B, context=4096, chips=lpu.chips_needed - 1))


def test_a_larger_batch_or_context_needs_more_chips_and_decodes_more_in_aggregate() -> None:
    small = plan_system(PlanRequest(MODEL_PRESETS["llama-3-8b"], context=2048, batch=1)).lpu
    batched = plan_system(PlanRequest(MODEL_PRESETS["llama-3-8b"], context=2048, batch=64)).lpu
    assert batched.chips_needed > small.chips_needed
    assert batched.plan.kv_tokens >= 64 * 2048
    assert batched.speed.aggregate_tokens_per_s > 10 * small.speed.aggregate_tokens_per_s
    # on the same system, sharing it never makes one user faster than having it alone
    alone = plan_system(
        PlanRequest(MODEL_PRESETS["llama-3-8b"], context=2048, batch=1, chips=batched.chips_needed)
    ).lpu
    assert batched.speed.per_user_tokens_per_s <= alone.speed.per_user_tokens_per_s


def test_costs_count_every_card_and_node_host_and_ratios_compare_with_the_gpu() -> None:
    hw = HardwareSpec()
    report = plan_system(PlanRequest(LLAMA_70B, context=4096, chips=576, hardware=hw))
    cost = report.lpu.cost
    assert cost.purchase_usd == 576 * 20_000 + 72 * hw.lpu.host_price_usd
    assert cost.avg_power_kw == pytest.approx((576 * 185 + 72 * hw.lpu.host_avg_power_w) / 1000)
    assert cost.tdp_kw > cost.avg_power_kw
    d = to_dict(report)
    assert d["lpu_over_gpu"]["purchase_usd"] == pytest.approx(cost.purchase_usd / 300_000, rel=1e-3)
    json.dumps(d)  # serialisable


def test_the_table_reports_every_figure_the_issue_asks_for() -> None:
    text = render_table(plan_system(PlanRequest(LLAMA_70B, context=4096, chips=576)))
    for needle in (
        "int8 weights",
        "min chips, weights only",
        "chips needed",
        "72 nodes of 8 in 8 rack(s)",
        "stage of",
        "decode per user",
        "time to first token",
        "aggregate",
        "kW average",
        "TDP",
        "1 year",
        "3 years",
        "H100",
        "LPU / GPU",
    ):
        assert needle in text, needle


def test_gpu_comparator_needs_two_servers_for_405b_in_fp16() -> None:
    model = dataclasses.replace(MODEL_PRESETS["llama-3.1-405b"], max_context=8192)
    report = plan_system(PlanRequest(model, context=8192))
    assert report.gpu.servers == 2
    assert report.lpu.chips_needed > 3000


def test_hf_config_json_with_experts_is_read_without_weights(tmp_path: Path) -> None:
    cfg = {
        "architectures": ["MixtralForCausalLM"],
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 32000,
        "max_position_embeddings": 32768,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "rope_theta": 1e6,
    }
    folder = tmp_path / "Mixtral-8x7B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    model = resolve_model(str(folder))
    assert model.name == "Mixtral-8x7B" and model.n_experts == 8 and model.n_experts_per_token == 2
    assert model.n_params == MODEL_PRESETS["mixtral-8x7b"].n_params
    assert 46.6e9 < model.n_params < 46.8e9
    del cfg["intermediate_size"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PlanInputError, match="misses the field intermediate_size"):
        model_from_hf_config(folder / "config.json")
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "gpt2.json").write_text(json.dumps(cfg))
    with pytest.raises(PlanInputError, match="GPT2LMHeadModel is not supported"):
        resolve_model(str(tmp_path / "gpt2.json"))


def test_names_resolve_to_presets_and_unknown_names_list_them() -> None:
    assert resolve_model("demo") == DEMO_MODEL
    assert resolve_model("llama-3.1-405b").n_layers == 126
    with pytest.raises(PlanInputError, match="unknown"):
        resolve_model("no-such-model")


def test_a_yaml_spec_overrides_only_the_fields_it_names(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "chip:\n  preset: groqchip1\n  sram_bytes: 500000000\n  name: NextChip\n"
        "lpu:\n  card_price_usd: 12000\n"
        "gpu_server:\n  precision: fp8\n"
        "power_price_usd_per_kw_month: 150\n"
    )
    spec = load_spec(path)
    assert spec.chip.name == "NextChip" and spec.chip.sram_bytes == 500_000_000
    assert spec.chip.clock_hz == HardwareSpec().chip.clock_hz
    assert spec.lpu.card_price_usd == 12_000 and spec.lpu.card_avg_power_w == 185
    assert spec.gpu_server.precision == "fp8" and spec.power_price_usd_per_kw_month == 150
    report = plan_system(PlanRequest(LLAMA_70B, context=4096, hardware=spec))
    assert report.lpu.chips_needed < plan_system(PlanRequest(LLAMA_70B, context=4096)).lpu.chips_needed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("chip:\n  sram_mb: 300\n", r"spec.yaml: chip: unknown field\(s\) sram_mb"),
        ("chip:\n  clock_hz: fast\n", r"spec.yaml: chip: clock_hz must be a number"),
        ("chip:\n  preset: groqchip9\n", r"unknown preset 'groqchip9'"),
        ("lpu:\n  card_price_usd: -1\n", r"spec.yaml: lpu: LpuDeployment.card_price_usd must be positive"),
        ("racks: 3\n", r"unknown section\(s\) racks"),
        ("chip: [1, 2\n", r"not valid YAML"),
    ],
)
def test_a_bad_spec_file_names_the_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message):
        load_spec(path)


def test_the_svg_draws_every_chip_with_its_stage_and_sram_fill() -> None:
    report = plan_system(PlanRequest(DEMO_MODEL, context=2048, chips=12))
    svg = render_svg(report)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    titles = [t.text or "" for t in root.iter(f"{ns}title")]
    assert len([t for t in titles if t.startswith("chip ")]) == 12
    assert sum("idle" in t for t in titles) == report.lpu.plan.idle_chips
    assert any("SRAM" in t and "% full" in t for t in titles)
    fill = sram_fill(report.lpu.plan)
    assert f"(here {fill['min']:.0%} to {fill['max']:.0%}, mean {fill['mean']:.0%})" in svg  # its own fill
    assert "tokens/s per user" in svg and "rack 1" in svg


def test_moe_layers_hold_whole_experts_then_split_them_when_kv_needs_more_chips() -> None:
    mixtral = MODEL_PRESETS["mixtral-8x7b"]
    one = plan_system(PlanRequest(mixtral, context=32768, max_num_batched_tokens=256)).lpu.plan
    assert {s.width for s in one.stages if s.layers} == {8}
    w1 = [next(sh for sh in c.shards if sh.tensor == "layers.0.w1") for c in one.chips if c.stage == 1]
    assert [sh.rows for sh in w1] == [(e * mixtral.ffn_dim, (e + 1) * mixtral.ffn_dim) for e in range(8)]
    many = plan_system(PlanRequest(mixtral, context=32768, batch=8)).lpu.plan
    widths = {s.width for s in many.stages if s.layers}
    assert min(widths) > 8 and all(w % 8 == 0 for w in widths)
    assert many.kv_tokens >= 8 * 32768
    assert all(c.used_bytes <= c.capacity_bytes for c in many.chips)


def test_the_planner_layout_is_the_compilers_placement() -> None:
    report = plan_system(PlanRequest(DEMO_MODEL, context=2048, chips=4))
    engine = EngineConfig(max_num_seqs=1, max_num_batched_tokens=512, max_kv_tokens=2048)
    direct = compile_model(DEMO_MODEL, SystemSpec(4), engine, 2048)
    assert report.lpu.plan == direct


def test_the_default_prefill_chunk_is_halved_until_the_layers_fit_and_an_asked_one_is_not() -> None:
    hw = HardwareSpec(chip=dataclasses.replace(HardwareSpec().chip, sram_bytes=1200 * 1024))
    report = plan_system(PlanRequest(DEMO_MODEL, context=2048, hardware=hw))
    assert report.lpu.prefill_chunk == 128
    assert report.lpu.plan.engine.max_num_batched_tokens == 128
    with pytest.raises(CompileError, match="cannot fit even split"):
        plan_system(PlanRequest(DEMO_MODEL, context=2048, hardware=hw, max_num_batched_tokens=512))


def test_groq3_is_a_chip_and_a_rack_of_its_own_with_fp8_weights() -> None:
    hw = chip_hardware("groq3")
    assert hw.chip.sram_bytes == 500_000_000 and hw.chip.weights == "fp8"
    assert hw.lpu.chips_per_node * hw.lpu.nodes_per_rack == 256  # an LPX rack: 32 trays of 8
    assert hw.chip.fp8_flops_per_s * 256 == pytest.approx(315e15)
    report = plan_system(PlanRequest(LLAMA_70B, context=4096, hardware=hw))
    g1 = plan_system(PlanRequest(LLAMA_70B, context=4096))
    assert report.lpu.chips_needed < g1.lpu.chips_needed / 2  # more than twice the SRAM per chip
    assert report.lpu.racks == 1 and "fp8 weights" in render_table(report)
    # FP8 only where the chip has FP8 matrix units
    with pytest.raises(ValueError, match="no FP8"):
        dataclasses.replace(HardwareSpec().chip, weights="fp8")


def test_prefill_on_gpus_adds_their_servers_and_takes_the_time_to_first_token() -> None:
    colocated = plan_system(PlanRequest(LLAMA_70B, context=4096, chips=576))
    hw = HardwareSpec(prefill_server=gpu_server("h100"))
    split = plan_system(PlanRequest(LLAMA_70B, context=4096, chips=576, hardware=hw))
    assert split.prefill is not None and colocated.prefill is None
    assert split.lpu.speed.per_user_tokens_per_s == colocated.lpu.speed.per_user_tokens_per_s
    assert split.lpu.speed.ttft_s == split.prefill.ttft_s < colocated.lpu.speed.ttft_s
    assert split.prefill.kv_bytes == 550 * 80 * 2 * 1024 * 2  # fp16 K and V of every layer
    assert split.system_cost.purchase_usd == colocated.lpu.cost.purchase_usd + 300_000
    assert to_dict(split)["prefill"]["server"] == "8 x H100-SXM5-80GB"


def test_compile_and_plan_report_the_same_kv_capacity_for_the_same_layout() -> None:
    report = plan_system(PlanRequest(LLAMA_70B, context=4096, chips=576))
    compiled = compile_plan("llama-2-70b", SystemSpec(576), EngineConfig())
    assert compiled.kv_capacity_tokens == report.lpu.plan.kv_capacity_tokens > report.lpu.plan.kv_tokens
    assert f"{compiled.kv_capacity_tokens:,} fit" in render_table(report)
    assert f"{compiled.kv_capacity_tokens:,} fit" in compiled.render()


def test_a_shorter_context_is_suggested_only_when_one_fits() -> None:
    long = MODEL_PRESETS["llama-3.3-70b"]
    assert shorter_context_that_fits(PlanRequest(long, context=131072, chips=600)) == 65536
    huge = MODEL_PRESETS["llama-3.1-405b"]  # 405 GB of weights: no context fits 100 chips
    assert shorter_context_that_fits(PlanRequest(huge, context=131072, chips=100)) is None
