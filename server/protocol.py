"""OpenAI API request and response bodies in the API's field order, and the one conversion to runtime types.

Requests accept unknown fields (`extra="allow"`) and ignore them as the OpenAI API's clients expect, but a
field the API defines and this server cannot honour is declared here and rejected by name: silently ignoring
`n=2` or `tools` would hand the client an answer to a different question.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lpu_runtime import MAX_TOP_LOGPROBS, GrammarSpec, InvalidRequestError, SamplingParams

# OpenAI documents `seed` as a 64-bit signed integer; the runtime's generators want a non-negative one.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64 = 2**64
MAX_N = 128  # the OpenAI API's limit on choices
MAX_COMPLETION_LOGPROBS = 5  # the legacy completions API's limit


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---- requests --------------------------------------------------------------------------------------------


class ContentPart(BaseModel):
    """One part of a message's content; only `text` parts are served, others are rejected by name."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCallRequest(BaseModel):
    """A call an earlier assistant turn made, as the client sends it back."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None  # honoured on tool messages (the function's name); refused elsewhere
    tool_calls: list[ToolCallRequest] | None = None  # assistant messages
    tool_call_id: str | None = None  # tool messages
    function_call: Any = None  # the deprecated function-calling API: refused


FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # the OpenAI API's rule for a tool's name


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


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
    min_tokens: int | None = None  # extension (vLLM)
    repetition_penalty: float | None = None  # extension (vLLM)
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> bias in [-100, 100]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def n_choices(self) -> int:
        return self.n or 1

    def _check_common(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError(
                "stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled."
            )

    def _logit_bias(self) -> tuple[tuple[int, float], ...]:
        bias = []
        for key, value in (self.logit_bias or {}).items():
            try:
                token = int(key)
            except ValueError:
                raise InvalidRequestError(
                    "logit_bias", f"logit_bias keys must be token ids, got {key!r}"
                ) from None
            bias.append((token, value))
        return tuple(bias)

    def _sampling_params(
        self, max_tokens: int | None, logprobs: int | None = None, grammar: GrammarSpec | None = None
    ) -> SamplingParams:
        defaults = SamplingParams()
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if grammar is not None and self.ignore_eos:
            # a finished grammar ends its request with EOS; ignoring it would pad the output with EOS tokens
            raise InvalidRequestError("ignore_eos", "ignore_eos cannot be combined with constrained output")
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
            repetition_penalty=defaults.repetition_penalty
            if self.repetition_penalty is None
            else self.repetition_penalty,
            min_tokens=self.min_tokens or 0,
            logit_bias=self._logit_bias(),
            logprobs=logprobs,
            grammar=grammar,
        )


def _reject_if(condition: bool, param: str, what: str | None = None) -> None:
    if condition:
        raise InvalidRequestError(param, f"{what or param} is not supported by this server")


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    max_tokens: int | None = None  # deprecated by OpenAI in favour of max_completion_tokens; both work
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # Known to the OpenAI API, not served here: typed loosely so any value reaches the "not supported" check.
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: Any = None

    def check_supported(self) -> None:
        self._check_common()
        _reject_if(bool(self.functions), "functions", "the deprecated functions parameter (use tools)")
        _reject_if(
            self.function_call not in (None, "none"), "function_call", "function_call (use tool_choice)"
        )
        _reject_if(self.audio is not None, "audio", "audio output")
        if self.modalities is not None and self.modalities != ["text"]:
            raise InvalidRequestError("modalities", "modalities other than 'text' are not supported")
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError("top_logprobs", "top_logprobs needs logprobs set to true")
        choice = self.tool_choice
        if choice not in (None, "none", "auto") and not self.tools:
            raise InvalidRequestError("tool_choice", "tool_choice needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in self.tool_names:
            raise InvalidRequestError(
                "tool_choice", f"tool_choice names {choice.function.name!r}, which is not among the tools"
            )
        for i, message in enumerate(self.messages):
            _reject_if(
                message.function_call is not None, f"messages.{i}.function_call", "function_call in messages"
            )
            if message.name is not None and message.role != "tool":
                raise InvalidRequestError(
                    f"messages.{i}.name",
                    "participant names are not supported: chat templates have no place for them",
                )
            if message.role == "tool" and message.tool_call_id is None:
                raise InvalidRequestError(f"messages.{i}.tool_call_id", "a tool message needs tool_call_id")
            if message.tool_calls and message.role != "assistant":
                raise InvalidRequestError(
                    f"messages.{i}.tool_calls", "only assistant messages carry tool_calls"
                )

    @property
    def tool_names(self) -> list[str]:
        return [t.function.name for t in self.tools or ()]

    @property
    def tool_calling(self) -> bool:
        """Whether the output is parsed for tool calls (tools given and tool_choice not "none")."""
        return bool(self.tools) and self.tool_choice != "none"

    def sampling_params(self, grammar: GrammarSpec | None = None) -> SamplingParams:
        self.check_supported()
        use_new = self.max_completion_tokens is not None
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        try:
            return self._sampling_params(
                self.max_completion_tokens if use_new else self.max_tokens, logprobs, grammar
            )
        except InvalidRequestError as exc:
            if exc.param == "max_tokens" and use_new:
                raise InvalidRequestError(
                    "max_completion_tokens", exc.message.replace("max_tokens", "max_completion_tokens")
                ) from None
            raise

    def template_messages(self) -> list[dict[str, Any]]:
        """Messages as chat templates expect them: a role and one string of content; assistant turns keep their
        tool_calls and tool turns their ids (server/tools/render.py adapts both to the template)."""
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
            entry: dict[str, Any] = {"role": role, "content": content}
            if message.tool_calls:
                entry["tool_calls"] = [call.model_dump() for call in message.tool_calls]
            if message.role == "tool":
                entry["tool_call_id"] = message.tool_call_id
                if message.name is not None:
                    entry["name"] = message.name
            rendered.append(entry)
        return rendered


class CompletionRequest(_SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = 16  # the OpenAI API's default for completions
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool | None = None
    best_of: Any = None
    suffix: Any = None

    def check_supported(self) -> None:
        self._check_common()
        _reject_if(self.best_of not in (None, 1), "best_of", f"best_of={self.best_of!r}")
        _reject_if(bool(self.suffix), "suffix")
        if self.echo and self.logprobs is not None:
            # the prompt's logprobs would need logits at every prompt position; the chips return the last
            raise InvalidRequestError(
                "logprobs", "logprobs with echo (the prompt's logprobs) is not supported"
            )

    def sampling_params(self) -> SamplingParams:
        self.check_supported()
        return self._sampling_params(self.max_tokens, self.logprobs)

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
    # prefill-decode disaggregation (`--prefill-on`): the GPU server prompts ran on (null: the LPU chips), and
    # the seconds the prompt's KV took to reach the LPUs (within emulated_completion_time)
    prefill_on: str | None = None
    emulated_kv_transfer_time: float = 0.0


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCallOut] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None
    refusal: None = None


class CompletionLogprobs(BaseModel):
    """The legacy completions API's shape: parallel lists, one entry per token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
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
    logprobs: CompletionLogprobs | None = None
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
    delta: dict[str, Any]  # a dict, not a model: keys are present only when sent (role on the first chunk)
    logprobs: ChatLogprobs | None = None
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
    logprobs: CompletionLogprobs | None = None
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
