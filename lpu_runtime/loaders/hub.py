"""Hugging Face Hub ids: the model's safetensors, config and tokenizer files in the hub's own cache.

Only what serving needs is fetched (no PyTorch pickles, no ONNX or GGUF siblings). Offline, or when the hub
is unreachable, a copy already in the cache is used; without one the error says how to pass a local path.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lpu_runtime.errors import ModelFileError

log = logging.getLogger(__name__)

ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja"]


def download(repo_id: str) -> Path:
    """The local snapshot directory of `repo_id`, downloaded into the hub cache if needed."""
    from huggingface_hub import snapshot_download  # imported here: only hub ids need it

    log.info("fetching %s from the Hugging Face Hub (or its local cache)", repo_id)
    name = repo_id.split("/")[-1]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=ALLOW_PATTERNS))
    except Exception as exc:  # offline, unreachable, gated, missing: every way the hub can fail
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelFileError(
            repo_id,
            f"cannot be fetched from the Hugging Face Hub and is not in its cache ({type(exc).__name__}: {reason}); "
            f"download it on a machine with access (`hf download {repo_id} --local-dir {name}`, the CLI "
            f"huggingface_hub installs) and pass the local directory: lpu serve --model /path/to/{name}",
        ) from None
