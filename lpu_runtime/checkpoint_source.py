"""Where a model's weights are, as plain data: what a stage worker needs to open its own view of them.

A `CheckpointSource` holds no open file and no closure, so it pickles: a stage worker in this process, in
another process or on another host opens it and reads only the tensors its chips hold (memory-mapped files,
or synthetic weights regenerated from their seed), and no process ever needs the whole model in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from lpu_runtime.config import ModelConfig
from lpu_runtime.errors import ModelFileError
from lpu_runtime.model import Checkpoint, tensor_shapes


class WeightFormat(StrEnum):
    SYNTHETIC = "synthetic"  # seeded random weights (the demo model, synthetic:<preset>)
    HF = "hf"  # a HuggingFace directory of safetensors
    GGUF = "gguf"
    LLAMA2C = "llama2c"


@dataclass(frozen=True)
class CheckpointSource:
    format: WeightFormat
    config: ModelConfig  # the architecture as served: its name, context cap and vocabulary padding applied
    path: str = ""  # the file or directory (every format but synthetic)
    seed: int = 0  # synthetic weights
    favoured_token_ids: tuple[int, ...] | None = None  # synthetic: output rows sampling should favour

    def open(self) -> Checkpoint:
        """The weights, read on demand tensor by tensor (cheap: headers only until a tensor is asked for)."""
        if self.format is WeightFormat.SYNTHETIC:
            from lpu_runtime.synthetic import synthetic_checkpoint

            return synthetic_checkpoint(self.config, self.seed, self.favoured_token_ids)
        path = Path(self.path)
        if self.format is WeightFormat.HF:
            from lpu_runtime.loaders.hf import load_hf_checkpoint

            opened = load_hf_checkpoint(path, self.config.name)
        elif self.format is WeightFormat.GGUF:
            from lpu_runtime.loaders.gguf import load_gguf_checkpoint

            opened = load_gguf_checkpoint(path, self.config.name)
        else:
            from lpu_runtime.loaders.llama2c import load_llama2c_checkpoint

            opened = load_llama2c_checkpoint(path, self.config.name)
        if tensor_shapes(opened.config) != tensor_shapes(self.config):
            raise ModelFileError(
                path, f"no longer holds the {self.config.name} architecture it was served as"
            )
        return replace(opened, config=self.config)
