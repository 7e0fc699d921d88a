"""Grammar-constrained decoding: which library computes JSON Schema token masks over our vocabulary fastest,
and what the chosen one costs the engine at 8 streams.

Part 1 (`libraries`, the default) compiles three JSON Schemas (a flat object, a nested pydantic-style model, a
tool call: anyOf two functions) with each library it can import (llguidance, outlines-core, xgrammar), then
walks the token ids of a valid instance as the sampler would: compute the next-token mask into a bitmask,
consume the token. It reports the compile time and the mask + consume time per token (mean and p99) on the
SmolLM2 vocabulary (49,152 tokens), plus the time to apply a bitmask to one row of logits with numpy.

Part 2 (`engine`) runs the real engine in this process on the demo model or SmolLM2: 8 streams decoding at
once, all constrained by a json_schema, against the same 8 streams unconstrained; it reports decode time per
step for both and the grammar's share of the constrained steps (time inside the grammar calls).

    python benchmarks/bench_grammar.py libraries [--models DIR] [--json out.json]
    python benchmarks/bench_grammar.py engine [--model smollm2] [--steps 48]

xgrammar imports torch and transformers at import time (its wheel requires torch, transformers and triton);
to measure it anyway, install transformers and put a stub `torch` module on PYTHONPATH: its matcher fills any
DLPack array, numpy's included. docs/structured-outputs.md has the numbers and the choice.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from lpu_runtime.tokenizer import Tokenizer  # noqa: E402
from lpu_runtime.tokenizers import load_tokenizer  # noqa: E402

SMOLLM2 = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"

SCHEMAS: dict[str, tuple[dict[str, Any], Any]] = {
    "flat": (
        {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "email": {"type": "string"},
                "active": {"type": "boolean"},
            },
            "required": ["name", "age", "email", "active"],
            "additionalProperties": False,
        },
        {"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "active": True},
    ),
    "nested": (
        {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "authors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"first": {"type": "string"}, "last": {"type": "string"}},
                        "required": ["first", "last"],
                        "additionalProperties": False,
                    },
                },
                "year": {"type": "integer"},
                "kind": {"enum": ["book", "paper", "talk"]},
            },
            "required": ["title", "authors", "year", "kind"],
            "additionalProperties": False,
        },
        {
            "title": "Attention Is All You Need",
            "authors": [{"first": "Ashish", "last": "Vaswani"}, {"first": "Noam", "last": "Shazeer"}],
            "year": 2017,
            "kind": "paper",
        },
    ),
    "tool_call": (
        {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {
                        "name": {"const": "get_weather"},
                        "arguments": {
                            "type": "object",
                            "properties": {
                                "city": {"type": "string"},
                                "unit": {"enum": ["celsius", "fahrenheit"]},
                            },
                            "required": ["city", "unit"],
                            "additionalProperties": False,
                        },
                    },
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {
                        "name": {"const": "search"},
                        "arguments": {
                            "type": "object",
                            "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
                            "required": ["query", "limit"],
                            "additionalProperties": False,
                        },
                    },
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                },
            ]
        },
        {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
    ),
}


class Matcher(Protocol):
    def fill(self, bitmask: np.ndarray[Any, np.dtype[np.int32]]) -> None: ...

    def consume(self, token: int) -> None: ...


@dataclass(frozen=True)
class Library:
    name: str
    version: str
    compile: Callable[[dict[str, Any]], Callable[[], Matcher]]  # schema -> a factory of fresh matchers


def _llguidance(tok: Tokenizer) -> Library:
    import llguidance

    from lpu_runtime.grammar import GrammarVocab, llg_tokenizer

    lltok = llg_tokenizer(GrammarVocab.of(tok))

    class M:
        def __init__(self, grammar: str) -> None:
            self.m = llguidance.LLMatcher(lltok, grammar)

        def fill(self, bitmask: np.ndarray[Any, np.dtype[np.int32]]) -> None:
            self.m.unsafe_compute_mask_ptr(bitmask.ctypes.data, bitmask.nbytes)

        def consume(self, token: int) -> None:
            if not self.m.consume_token(token):
                raise RuntimeError(self.m.get_error())

    def compile_(schema: dict[str, Any]) -> Callable[[], Matcher]:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
        return lambda: M(grammar)

    return Library("llguidance", llguidance.__version__, compile_)


def _outlines_core(tok: Tokenizer) -> Library:
    import importlib.metadata

    import outlines_core as oc

    eos = min(tok.eos_ids)
    pieces: dict[bytes, list[int]] = {}
    for i in range(tok.vocab_size):
        piece = tok.token_bytes(i)
        if piece and i not in tok.eos_ids:
            pieces.setdefault(piece, []).append(i)
    vocabulary = oc.Vocabulary(eos, pieces)

    class M:
        def __init__(self, index: Any) -> None:
            self.g = oc.Guide(index)

        def fill(self, bitmask: np.ndarray[Any, np.dtype[np.int32]]) -> None:
            self.g.write_mask_into(bitmask.ctypes.data, bitmask.size, 4)

        def consume(self, token: int) -> None:
            self.g.advance(token)

    def compile_(schema: dict[str, Any]) -> Callable[[], Matcher]:
        regex = oc.json_schema.build_regex_from_schema(json.dumps(schema))
        index = oc.Index(regex, vocabulary)
        return lambda: M(index)

    return Library("outlines-core", importlib.metadata.version("outlines_core"), compile_)


def _xgrammar(tok: Tokenizer) -> Library:
    import importlib.metadata

    import xgrammar as xgr

    encoded = [tok.token_bytes(i) or f"<|special_{i}|>".encode() for i in range(tok.vocab_size)]
    info = xgr.TokenizerInfo(encoded, vocab_type=xgr.VocabType.RAW, stop_token_ids=sorted(tok.eos_ids))
    compiler = xgr.GrammarCompiler(info, max_threads=1)

    class M:
        def __init__(self, compiled: Any) -> None:
            self.m = xgr.GrammarMatcher(compiled)

        def fill(self, bitmask: np.ndarray[Any, np.dtype[np.int32]]) -> None:
            self.m.fill_next_token_bitmask(bitmask[None, :])

        def consume(self, token: int) -> None:
            if not self.m.accept_token(token):
                raise RuntimeError("rejected")

    def compile_(schema: dict[str, Any]) -> Callable[[], Matcher]:
        compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)
        return lambda: M(compiled)

    return Library("xgrammar", importlib.metadata.version("xgrammar"), compile_)


def _walk(matcher: Matcher, ids: list[int], bitmask: np.ndarray[Any, np.dtype[np.int32]]) -> list[float]:
    """Seconds per token of mask + consume, following `ids`; checks each id is allowed by its mask."""
    times = []
    for token in ids:
        start = time.perf_counter()
        matcher.fill(bitmask)
        matcher.consume(token)
        times.append(time.perf_counter() - start)
        if not (int(bitmask[token // 32]) >> (token % 32)) & 1:
            raise RuntimeError(f"token {token} was not in its mask")
    return times


def _apply_ms(vocab: int, repeat: int = 200) -> float:
    """numpy: a bitmask to a boolean row and -inf into one row of logits (what the sampler does)."""
    rng = np.random.default_rng(0)
    bitmask = rng.integers(-(2**31), 2**31 - 1, size=(vocab + 31) // 32, dtype=np.int32)
    logits = rng.standard_normal(vocab)
    from lpu_runtime.grammar import allowed_from_bitmask

    start = time.perf_counter()
    for _ in range(repeat):
        allowed = allowed_from_bitmask(bitmask, vocab)
        np.putmask(logits, ~allowed, -np.inf)
    return 1000 * (time.perf_counter() - start) / repeat


def libraries(models: Path, out: Path | None) -> None:
    tok = load_tokenizer(models / SMOLLM2)
    vocab = tok.vocab_size
    words = (vocab + 31) // 32
    rows: list[dict[str, Any]] = []
    setup_ms: dict[str, float] = {}
    for factory in (_llguidance, _outlines_core, _xgrammar):
        start = time.perf_counter()
        try:
            lib = factory(tok)
        except Exception as exc:
            rows.append({"library": factory.__name__.strip("_"), "error": f"{type(exc).__name__}: {exc}"})
            continue
        setup_ms[f"{lib.name} {lib.version}"] = 1000 * (time.perf_counter() - start)
        for schema_name, (schema, instance) in SCHEMAS.items():
            # Each library's default JSON layout puts one space after ':' and ',' (json.dumps's).
            ids = [*tok.encode(json.dumps(instance), add_bos=False), min(tok.eos_ids)]
            start = time.perf_counter()
            try:
                make = lib.compile(schema)
                first = make()
            except Exception as exc:
                rows.append({"library": lib.name, "schema": schema_name, "error": f"{exc}"[:200]})
                continue
            compile_ms = 1000 * (time.perf_counter() - start)
            bitmask = np.zeros(words, dtype=np.int32)
            per_token: list[float] = []
            try:
                per_token += _walk(first, ids[:-1], bitmask)
                for _ in range(4):
                    per_token += _walk(make(), ids[:-1], bitmask)
            except Exception as exc:
                rows.append({"library": lib.name, "schema": schema_name, "error": f"walk: {exc}"[:200]})
                continue
            us = sorted(1e6 * t for t in per_token)
            rows.append(
                {
                    "library": f"{lib.name} {lib.version}",
                    "schema": schema_name,
                    "tokens": len(ids) - 1,
                    "compile_ms": round(compile_ms, 1),
                    "mask_us_mean": round(statistics.fmean(us), 1),
                    "mask_us_p99": round(us[min(len(us) - 1, int(0.99 * len(us)))], 1),
                }
            )
    print(
        f"vocabulary: SmolLM2, {vocab} tokens; apply a bitmask to one logits row: {_apply_ms(vocab):.3f} ms "
        "(a random mask: the worst case for the CPU's branch prediction)"
    )
    for name, ms in setup_ms.items():
        print(f"{name}: vocabulary prepared in {ms:.0f} ms (once per server)")
    print(f"{'library':<24} {'schema':<10} {'tokens':>6} {'compile ms':>11} {'mask us mean':>13} {'p99':>8}")
    for row in rows:
        if "error" in row:
            print(f"{row['library']:<24} {row.get('schema', ''):<10} error: {row['error']}")
        else:
            print(
                f"{row['library']:<24} {row['schema']:<10} {row['tokens']:>6} {row['compile_ms']:>11} "
                f"{row['mask_us_mean']:>13} {row['mask_us_p99']:>8}"
            )
    if out is not None:
        out.write_text(json.dumps(rows, indent=2))


def engine(model: str, steps: int, streams: int) -> None:
    """Decode time per step with `streams` sequences, unconstrained and all under a json_schema grammar."""
    from lpu_runtime import grammar as grammar_module
    from lpu_runtime.async_engine import AsyncEngine
    from lpu_runtime.config import EngineConfig, SystemSpec
    from lpu_runtime.engine import Engine
    from lpu_runtime.types import GenerationRequest, GrammarSpec, SamplingParams

    async_engine = AsyncEngine.create(
        model, SystemSpec(n_chips=8), EngineConfig(max_num_seqs=streams), in_process=True
    )
    core = async_engine.core
    inner: Engine = core.engine  # type: ignore[attr-defined]
    schema = SCHEMAS["nested"][0]
    spent = [0.0]
    original = grammar_module.GrammarMatcher.mask_into

    def timed_mask(self: grammar_module.GrammarMatcher, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(self, *args)
        finally:
            spent[0] += time.perf_counter() - start

    grammar_module.GrammarMatcher.mask_into = timed_mask  # type: ignore[method-assign, assignment]
    prompt = tuple(async_engine.encode_text("Write a JSON record about a famous paper:"))
    results = {}
    for label, spec in (
        ("unconstrained", None),
        ("json_schema", GrammarSpec("json_schema", json.dumps(schema))),
    ):
        for i in range(streams):
            params = SamplingParams(
                max_tokens=steps + 2, temperature=1.0, seed=i, ignore_eos=spec is None, grammar=spec
            )
            inner.add(inner.make_sequence(GenerationRequest(f"{label}-{i}", prompt, params)))
        while any(not s.output_ids for s in inner.scheduler.running) or inner.scheduler.waiting:
            inner.step()  # prompts in, first tokens out
        spent[0] = 0.0
        times: list[float] = []
        while inner.has_work() and len(times) < steps:
            if len(inner.scheduler.running) < streams:
                break  # a grammar finished a sequence: the rest would not be 8 streams
            start = time.perf_counter()
            inner.step()
            times.append(time.perf_counter() - start)
        for seq in list(inner.scheduler.running) + list(inner.scheduler.waiting):
            inner.abort(seq.request_id)
        results[label] = (statistics.median(times), sum(times), spent[0], len(times))
    base = results["unconstrained"][0]
    print(f"{model}, {streams} streams, 8 chips")
    for label, (median, total, grammar_s, n) in results.items():
        share = grammar_s / total if total else 0.0
        print(
            f"{label:<14} decode step median {1000 * median:7.2f} ms over {n} steps; grammar "
            f"{1000 * grammar_s / max(n, 1):6.3f} ms/step = {100 * share:4.1f}% of decode time; "
            f"step vs unconstrained {100 * (median / base - 1):+5.1f}%"
        )
    async_engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", nargs="?", choices=("libraries", "engine"), default="libraries")
    default_models = os.environ.get("LPU_TEST_MODELS", str(REPO_ROOT.parent / "shared" / "models"))
    parser.add_argument("--models", type=Path, default=Path(default_models))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--streams", type=int, default=8)
    args = parser.parse_args()
    if args.part == "libraries":
        libraries(args.models, args.json)
    else:
        engine(args.model, args.steps, args.streams)


if __name__ == "__main__":
    main()
