"""Errors the runtime raises on purpose, each carrying what a caller needs to explain it."""

from __future__ import annotations


class LpuError(Exception):
    """Base of every deliberate runtime error."""


class InvalidRequestError(LpuError, ValueError):
    """A request field holds a value the runtime cannot serve; `param` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


class ContextLengthExceededError(InvalidRequestError):
    """Prompt plus max_tokens can never fit: the model's context or the system's KV capacity is too small."""

    def __init__(self, message: str, *, prompt_tokens: int, limit: int, param: str = "messages") -> None:
        super().__init__(param, message)
        self.prompt_tokens = prompt_tokens
        self.limit = limit


class CompileError(LpuError):
    """The model cannot be placed on the system; the message names the tensor and the bytes."""


class SramOverflowError(LpuError):
    """An allocation would pass a chip's SRAM capacity."""


class EngineDeadError(LpuError):
    """The engine cannot take requests now: its step loop died (and is being restarted, or is gone for good)
    or the server is shutting down."""


class ChatTemplateError(LpuError):
    """The chat template could not render the conversation."""


class ModelFileError(LpuError, ValueError):
    """A model, tokenizer or template file is missing, malformed or of an unsupported kind: one sentence
    naming the file and the problem."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class StageUnavailableError(LpuError):
    """A pipeline stage running elsewhere (a Ray actor) died or stopped answering: the step is lost, and every
    running request's KV cache with it; the message names the stage."""
