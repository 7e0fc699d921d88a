"""Real vocabularies behind the Tokenizer protocol: tokenizer.json, GGUF SentencePiece/BPE, llama2.c
tokenizer.bin. `load_tokenizer` picks the right one from a model's files."""

from lpu_runtime.tokenizers.load import load_tokenizer, tokenizer_from_gguf

__all__ = ["load_tokenizer", "tokenizer_from_gguf"]
