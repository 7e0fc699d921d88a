"""The files under examples/ that the README and docs name exist and do what the commands shown expect."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from lpu_runtime.chat_template import load_chat_template
from lpu_runtime.hardware import load_spec
from lpu_runtime.tokenizers import load_tokenizer
from server.cli import main
from tests.shared_models import PROJECT_ROOT, require

DOCS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
EXAMPLE = re.compile(r"examples/[\w./-]+\w")


def test_every_example_file_the_docs_name_exists() -> None:
    named = {m for doc in DOCS for m in EXAMPLE.findall(doc.read_text(encoding="utf-8"))}
    assert {"examples/chat-template.jinja", "examples/next-gen.yaml"} <= named
    assert [name for name in sorted(named) if not (PROJECT_ROOT / name).is_file()] == []


def test_the_hardware_spec_is_the_one_docs_hardware_shows(capsys: pytest.CaptureFixture[str]) -> None:
    path = PROJECT_ROOT / "examples" / "next-gen.yaml"
    shown = re.search(
        r"```yaml\n(# examples/next-gen\.yaml.*?)```",
        (PROJECT_ROOT / "docs" / "hardware.md").read_text(),
        re.S,
    )
    assert shown is not None
    assert yaml.safe_load(shown.group(1)) == yaml.safe_load(path.read_text())
    assert load_spec(path).chip.name == "NextChip"
    assert main(["plan", "--model", "llama-2-70b", "--spec", str(path), "--chip-price", "15000"], env={}) == 0
    assert "NextChip" in capsys.readouterr().out


def test_the_chat_template_renders_what_stories260k_hf_renders() -> None:
    tokenizer = load_tokenizer(require("stories260K/tok512.bin"))
    template = load_chat_template(PROJECT_ROOT / "examples" / "chat-template.jinja", tokenizer)
    example = json.loads(require("golden/stories260K.json").read_text())["chat_template_example"]
    assert template is not None
    assert template.render(example["messages"], add_generation_prompt=True) == example["rendered"]
