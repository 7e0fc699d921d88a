"""Settings from flags and LPU_* variables, and the `lpu` command line around them."""

from __future__ import annotations

import pytest

from lpu_runtime import DEFAULT_MODEL, DEMO_MODEL
from server.cli import build_parser, main
from server.settings import MIB, Settings, SettingsError, settings_from


def resolve(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    return settings_from(build_parser().parse_args(["serve", *argv]), env or {})


def test_defaults() -> None:
    settings = resolve([])
    assert (settings.host, settings.port, settings.model, settings.chips) == (
        "127.0.0.1",
        8000,
        DEFAULT_MODEL,  # SmolLM2-135M-Instruct, fetched once from PyPI: a real chat model by default
        8,
    )
    assert (
        settings.metrics_max_users == 50 and settings.api_key is None and settings.served_model_name is None
    )
    assert settings.system_spec().n_chips == 8


def test_environment_fills_what_flags_leave_out() -> None:
    env = {
        "LPU_HOST": "0.0.0.0", "LPU_PORT": "9001", "LPU_CHIPS": "2", "LPU_MAX_NUM_SEQS": "8",
        "LPU_MAX_NUM_BATCHED_TOKENS": "64", "LPU_SERVED_MODEL_NAME": "org/demo", "LPU_LOG_LEVEL": "WARNING",
        "LPU_METRICS_MAX_USERS": "3", "LPU_CHIP_SRAM_MB": "64", "LPU_API_KEY": "secret",
    }  # fmt: skip
    settings = resolve([], env)
    assert (settings.host, settings.port, settings.chips) == ("0.0.0.0", 9001, 2)
    assert (
        settings.engine_config().max_num_seqs == 8 and settings.engine_config().max_num_batched_tokens == 64
    )
    assert settings.served_model_name == "org/demo" and settings.log_level == "warning"
    assert settings.metrics_max_users == 3 and settings.api_key == "secret"
    assert settings.system_spec().chip.sram_bytes == 64 * MIB


def test_flags_win_over_environment() -> None:
    settings = resolve(["--port", "9100", "--chips", "8"], {"LPU_PORT": "9001", "LPU_CHIPS": "2"})
    assert (settings.port, settings.chips) == (9100, 8)


def test_api_key_stays_out_of_repr() -> None:
    assert "secret" not in repr(resolve(["--api-key", "secret"]))


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"LPU_PORT": "http"}, ["LPU_PORT", "integer"]),
        ({"LPU_PORT": "70000"}, ["LPU_PORT", "65535"]),
        ({"LPU_CHIPS": "0"}, ["LPU_CHIPS", "positive"]),
        ({"LPU_CHIP_SRAM_MB": "-1"}, ["LPU_CHIP_SRAM_MB"]),
        ({"LPU_CHIP_SRAM_MB": "nan"}, ["LPU_CHIP_SRAM_MB"]),
        ({"LPU_MODEL": "no-such-model"}, ["LPU_MODEL", DEMO_MODEL.name, "smollm2"]),
        (
            {"LPU_MODEL": "../absent/model.gguf"},
            ["LPU_MODEL", "'../absent/model.gguf': no such file or directory"],
        ),
        ({"LPU_LOG_LEVEL": "loud"}, ["LPU_LOG_LEVEL", "debug"]),
        ({"LPU_HOST": " "}, ["LPU_HOST"]),
    ],
)
def test_invalid_environment_values_name_the_variable(env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(SettingsError) as info:
        resolve([], env)
    for name in names:
        assert name in str(info.value)


def test_invalid_flag_exits_2_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--chips", "zero"], env={})
    assert info.value.code == 2
    assert "--chips" in capsys.readouterr().err


def test_invalid_environment_exits_2_naming_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["compile"], env={"LPU_CHIPS": "-3"})
    assert info.value.code == 2
    assert "LPU_CHIPS" in capsys.readouterr().err


def test_a_subcommand_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([], env={})
    assert info.value.code == 2


def test_compile_prints_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", "--model", DEMO_MODEL.name, "--chips", "4"], env={}) == 0
    out = capsys.readouterr().out
    assert out.strip()


def test_compile_error_goes_to_stderr_with_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    # 1 MiB of SRAM per chip cannot hold the demo model's weights on 2 chips
    assert main(["compile", "--model", DEMO_MODEL.name, "--chips", "2", "--chip-sram-mb", "1"], env={}) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("lpu compile: lpu-demo-untrained-13m: ") and captured.out == ""


def test_admission_bounds_scale_with_the_running_batch_unless_set() -> None:
    assert Settings(max_num_seqs=32).admission_bounds() == (64, 32768)  # a burst of two batches
    assert Settings(max_num_seqs=4).admission_bounds() == (16, 8192)  # never below the floors
    explicit = Settings(max_num_seqs=32, max_waiting_requests=2, max_waiting_tokens=100)
    assert explicit.admission_bounds() == (2, 100)
