"""OpenAI API request and response bodies in the API's field order, and the one conversion to runtime types.

Requests accept unknown fields (`extra="allow"`) and ignore them as the OpenAI API's clients expect, but a
field the API defines and this server cannot honour is declared here and rejected by name: silently ignoring
`n=2` or `tools` would hand the client an answer to a different question.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lpu_runtime import InvalidRequestError, SamplingParams

# OpenAI documents `seed` as a 64-bit signed integer; the runtime's generators want a non-negative one.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64 = 2**64


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---- requests --------------------------------------------------------------------------------------------


class ContentPart(BaseModel):
    """One part of a message's content; only `text` parts are served, others are rejected by name."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: Any = None  # unsupported
    function_call: Any = None  # unsupported


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class _SamplingFields(_Request):
    """Fields chat and completions share, with the runtime's defaults when absent."""

    model: str
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    top_k: int | None = None  # extension (vLLM, llama.cpp)
    ignore_eos: bool | None = None  # extension (vLLM)
    # Known to the OpenAI API, not served here: typed loosely so any value reaches the "not supported" check.
    n: Any = None
    logit_bias: Any = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def _check_common_unsupported(self) -> None:
        if self.n is not None and self.n != 1:
            raise InvalidRequestError(
                "n", f"n={self.n!r} is not supported: this server returns one choice (n=1)"
            )
        if self.logit_bias:
            raise InvalidRequestError("logit_bias", "logit_bias is not supported")

    def _sampling_params(self, max_tokens: int | None) -> SamplingParams:
        defaults = SamplingParams()
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            top_k=defaults.top_k if self.top_k is None else self.top_k,
            seed=None if self.seed is None else self.seed % UINT64,
            stop=stop,
            ignore_eos=bool(self.ignore_eos),
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
        )


def _reject_if(condition: bool, param: str, what: str | None = None) -> None:
    if condition:
        raise InvalidRequestError(param, f"{what or param} is not supported by this server")


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    max_tokens: int | None = None  # deprecated by OpenAI in favour of max_completion_tokens; both work
    logprobs: Any = None
    top_logprobs: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None
    response_format: Any = None
    audio: Any = None
    modalities: Any = None

    def check_supported(self) -> None:
        self._check_common_unsupported()
        _reject_if(bool(self.logprobs), "logprobs")
        _reject_if(bool(self.top_logprobs), "top_logprobs")
        _reject_if(bool(self.tools), "tools", "tool calling (tools)")
        _reject_if(self.tool_choice not in (None, "none"), "tool_choice")
        _reject_if(bool(self.functions), "functions", "function calling (functions)")
        _reject_if(self.function_call not in (None, "none"), "function_call")
        _reject_if(self.parallel_tool_calls is not None, "parallel_tool_calls")
        _reject_if(self.audio is not None, "audio", "audio output")
        if self.modalities is not None and self.modalities != ["text"]:
            raise InvalidRequestError("modalities", "modalities other than 'text' are not supported")
        fmt = self.response_format
        if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
            kind = fmt.get("type") if isinstance(fmt, dict) else fmt
            raise InvalidRequestError(
                "response_format", f"response_format {kind!r} is not supported; only 'text'"
            )
        for i, message in enumerate(self.messages):
            _reject_if(bool(message.tool_calls), f"messages.{i}.tool_calls", "tool_calls in messages")
            _reject_if(
                message.function_call is not None, f"messages.{i}.function_call", "function_call in messages"
            )

    def sampling_params(self) -> SamplingParams:
        self.check_supported()
        use_new = self.max_completion_tokens is not None
        try:
            return self._sampling_params(self.max_completion_tokens if use_new else self.max_tokens)
        except InvalidRequestError as exc:
            if exc.param == "max_tokens" and use_new:
                raise InvalidRequestError(
                    "max_completion_tokens", exc.message.replace("max_tokens", "max_completion_tokens")
                ) from None
            raise

    def template_messages(self) -> list[dict[str, Any]]:
        """Messages as chat templates expect them: a role and one string of content."""
        rendered: list[dict[str, Any]] = []
        for i, message in enumerate(self.messages):
            content = message.content
            if content is None:
                if message.role != "assistant":
                    raise InvalidRequestError(
                        f"messages.{i}.content", f"a {message.role} message needs content"
                    )
                content = ""
            elif isinstance(content, list):
                texts = []
                for j, part in enumerate(content):
                    if part.type != "text" or part.text is None:
                        raise InvalidRequestError(
                            f"messages.{i}.content.{j}.type",
                            f"content parts of type {part.type!r} are not supported, only 'text' parts",
                        )
                    texts.append(part.text)
                content = "".join(texts)  # OpenAI joins text parts with no separator
            # Templates know system/user/assistant; OpenAI defines developer as system's successor.
            role = "system" if message.role == "developer" else message.role
            rendered.append({"role": role, "content": content})
        return rendered


class CompletionRequest(_SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = 16  # the OpenAI API's default for completions
    logprobs: Any = None
    best_of: Any = None
    echo: Any = None
    suffix: Any = None

    def check_supported(self) -> None:
        self._check_common_unsupported()
        _reject_if(self.logprobs is not None, "logprobs")
        _reject_if(self.best_of not in (None, 1), "best_of", f"best_of={self.best_of!r}")
        _reject_if(bool(self.echo), "echo")
        _reject_if(bool(self.suffix), "suffix")

    def sampling_params(self) -> SamplingParams:
        self.check_supported()
        return self._sampling_params(self.max_tokens)

    def single_prompt(self) -> str | list[int]:
        """The one prompt as text or token ids; batches are a list of several prompts and are rejected."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return prompt
        if not prompt:
            raise InvalidRequestError("prompt", "prompt must not be empty")
        if isinstance(prompt[0], int):
            return [int(t) for t in prompt]
        if len(prompt) > 1:
            raise InvalidRequestError(
                "prompt", f"batched prompts are not supported: got {len(prompt)}, send one"
            )
        only = prompt[0]
        if isinstance(only, list) and not only:
            raise InvalidRequestError("prompt", "prompt must not be empty")
        return only


# ---- responses -------------------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # Groq's extension: host wall-clock seconds
    queue_time: float
    prompt_time: float
    completion_time: float
    total_time: float


class LpuInfo(BaseModel):
    """`x_lpu`: what the emulated hardware would have taken, from the simulated clock."""

    emulated_prompt_time: float  # seconds
    emulated_completion_time: float  # seconds
    emulated_tokens_per_second: float
    chips: int
    pipeline_stages: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage
    x_lpu: LpuInfo


class CompletionChoice(BaseModel):
    text: str
    index: int = 0
    logprobs: None = None
    finish_reason: str


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage
    x_lpu: LpuInfo


class ChunkChoice(BaseModel):
    index: int = 0
    delta: dict[str, str]  # a dict, not a model: keys are present only when sent (role on the first chunk)
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    x_lpu: LpuInfo | None = None


class CompletionChunkChoice(BaseModel):
    text: str
    index: int = 0
    logprobs: None = None
    finish_reason: str | None = None


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None
    x_lpu: LpuInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lpu-serve"
    # extensions
    description: str
    max_model_len: int
    chips: int
    pipeline_stages: int
    chip: str
    parameters: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
