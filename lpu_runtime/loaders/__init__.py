"""Checkpoint formats, one module each, all producing `model.Checkpoint` (float32, HuggingFace layout)."""
