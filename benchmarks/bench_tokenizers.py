"""Tokenizer benchmark: load, encode, decode and stream a ~4 KB prompt with each real vocabulary.

The goal it shows: encoding a 4 KB prompt with the 32k Llama vocabulary takes well under 50 ms in every
format (GGUF SentencePiece, llama2.c tokenizer.bin, tokenizer.json). Texts: English prose, text without
spaces (one long pre-token: the worst case for merges), and CJK with emoji (byte fallback).

    python benchmarks/bench_tokenizers.py [--models DIR] [--repeat 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lpu_runtime.tokenizer import IncrementalDetokenizer, Tokenizer
from lpu_runtime.tokenizers import load_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    "llama-cpp-vocab/ggml-vocab-llama-spm.gguf",
    "llama2-tokenizer/tokenizer.bin",
    "llama2-tokenizer/hf",
    "llama-cpp-vocab/ggml-vocab-gpt-2.gguf",
    "llama-cpp-vocab/ggml-vocab-deepseek-llm.gguf",
]
TARGET_BYTES = 4096


def _texts() -> dict[str, str]:
    prose = (REPO_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    cjk = "我想在apple工作1314151天～日本語のテキスト🙂 "
    return {
        "english": (prose * (TARGET_BYTES // len(prose) + 1))[:TARGET_BYTES],
        "no-spaces": ("abcdefghij" * TARGET_BYTES)[:TARGET_BYTES],
        "cjk+emoji": (cjk * TARGET_BYTES)[: TARGET_BYTES // 3],  # ~3 UTF-8 bytes per character
    }


def _best_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def _stream(tok: Tokenizer, ids: list[int]) -> str:
    detok = IncrementalDetokenizer(tok)
    return "".join(detok.push(i) for i in ids) + detok.flush()


def _measure(tok: Tokenizer, text: str, repeat: int) -> dict[str, Any]:
    # The first encode is cold: the BPE adapter caches pre-tokens, so later encodes of text it has seen are
    # faster. Both are reported; a new prompt costs between the two.
    start = time.perf_counter()
    ids = tok.encode(text, add_bos=True)
    first_ms = 1000 * (time.perf_counter() - start)
    return {
        "bytes": len(text.encode()),
        "tokens": len(ids),
        "first_encode_ms": round(first_ms, 2),
        "encode_ms": round(_best_ms(lambda: tok.encode(text, add_bos=True), repeat), 2),
        "decode_ms": round(_best_ms(lambda: tok.decode(ids), repeat), 2),
        "stream_ms": round(_best_ms(lambda: _stream(tok, ids), repeat), 2),
    }


def run(models: Path, repeat: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    texts = _texts()
    for source in SOURCES:
        path = models / source
        if not path.exists():
            print(f"skipping {source}: not in {models}")
            continue
        start = time.perf_counter()
        tok = load_tokenizer(path)
        load_ms = 1000 * (time.perf_counter() - start)
        for name, text in texts.items():
            rows.append(
                {
                    "vocabulary": source,
                    "adapter": type(tok).__name__,
                    "vocab_size": tok.vocab_size,
                    "load_ms": round(load_ms, 1),
                    "text": name,
                    **_measure(tok, text, repeat),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_models = os.environ.get("LPU_TEST_MODELS") or str(REPO_ROOT.parent / "shared" / "models")
    parser.add_argument("--models", type=Path, default=Path(default_models), help="the shared/models folder")
    parser.add_argument("--repeat", type=int, default=7, help="runs per measurement; the best is reported")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = run(args.models, args.repeat)
    header = f"{'vocabulary':<34} {'adapter':<23} {'load ms':>8} {'text':<10} {'bytes':>6} {'tokens':>6} {'1st enc ms':>10} {'encode ms':>9} {'decode ms':>9} {'stream ms':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{Path(r['vocabulary']).name:<34} {r['adapter']:<23} {r['load_ms']:>8.0f} {r['text']:<10} "
            f"{r['bytes']:>6} {r['tokens']:>6} {r['first_encode_ms']:>10.2f} {r['encode_ms']:>9.2f} {r['decode_ms']:>9.2f} {r['stream_ms']:>9.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
