"""Streamed chunks, checked against the official SDK's own chunk models as well as the OpenAI spec's rules."""

from __future__ import annotations

import json

from openai.types import Completion as SdkCompletion
from openai.types.chat import ChatCompletionChunk as SdkChatChunk

from server.chunks import ChatChunks, CompletionChunks, ResponseMeta
from server.protocol import CompletionLogprobs, LpuInfo, TokenLogprobOut, TopLogprob, Usage
from server.tools.stream import CallDelta

META = ResponseMeta(id="chatcmpl-abc", created=1700000000, model="demo", system_fingerprint="fp_1")
USAGE = Usage(
    prompt_tokens=3, completion_tokens=2, total_tokens=5,
    queue_time=0.001, prompt_time=0.002, completion_time=0.003, total_time=0.006,
)  # fmt: skip
X_LPU = LpuInfo(
    emulated_prompt_time=1e-5, emulated_completion_time=2e-5, emulated_tokens_per_second=5e4, chips=4,
    pipeline_stages=4,
)  # fmt: skip


def chat_stream(include_usage: bool) -> list[dict[str, object]]:
    chunks = ChatChunks(META, include_usage)
    raw = [chunks.opening(0), chunks.content(0, "Hel"), chunks.content(0, "lo"), chunks.finish(0, "stop")]
    if include_usage:
        raw.append(chunks.usage(USAGE, X_LPU))
    return [json.loads(r) for r in raw]


def test_chat_stream_follows_the_openai_sequence() -> None:
    stream = chat_stream(include_usage=False)
    assert stream[0]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert [c["choices"][0]["delta"] for c in stream[1:3]] == [{"content": "Hel"}, {"content": "lo"}]  # type: ignore[index]
    assert stream[-1]["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    for chunk in stream:
        assert (chunk["id"], chunk["created"], chunk["object"]) == (
            META.id,
            META.created,
            "chat.completion.chunk",
        )
        assert chunk["system_fingerprint"] == "fp_1" and chunk["model"] == "demo"
        assert "usage" not in chunk and "x_lpu" not in chunk
        SdkChatChunk.model_validate(chunk)


def test_with_include_usage_every_chunk_has_usage_null_and_one_more_chunk_carries_it() -> None:
    stream = chat_stream(include_usage=True)
    assert all(chunk["usage"] is None for chunk in stream[:-1])
    last = stream[-1]
    assert last["choices"] == [] and last["id"] == META.id
    assert last["usage"] == USAGE.model_dump()
    assert last["x_lpu"] == X_LPU.model_dump()
    sdk_last = SdkChatChunk.model_validate(last)
    assert sdk_last.usage is not None and sdk_last.usage.total_tokens == 5


def test_chunks_are_single_line_json() -> None:
    chunk = ChatChunks(META, False).content(0, "line one\nline two\r\n")
    assert "\n" not in chunk and "\r" not in chunk
    assert json.loads(chunk)["choices"][0]["delta"]["content"] == "line one\nline two\r\n"


def test_completion_stream_chunks() -> None:
    chunks = CompletionChunks(META, include_usage=True)
    content = json.loads(chunks.content(0, "abc"))
    finish = json.loads(chunks.finish(0, "length"))
    usage = json.loads(chunks.usage(USAGE, X_LPU))
    assert content["object"] == "text_completion" and content["choices"][0]["text"] == "abc"
    assert content["usage"] is None and content["choices"][0]["finish_reason"] is None
    assert finish["choices"][0] == {"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 2
    # The SDK's Completion model types finish_reason as non-null, though the API streams null mid-stream
    # (the SDK builds stream chunks without validating); the closing chunks must validate.
    for chunk in (finish, usage):
        SdkCompletion.model_validate(chunk)


def test_each_chunk_names_its_choice() -> None:
    chunks = ChatChunks(META, False)
    for raw in (chunks.opening(1), chunks.content(1, "x"), chunks.finish(1, "length")):
        assert [c["index"] for c in json.loads(raw)["choices"]] == [1]
    completion = CompletionChunks(META, False)
    assert json.loads(completion.content(2, "y"))["choices"][0]["index"] == 2


def test_tool_call_deltas_send_id_type_and_name_first_then_arguments() -> None:
    chunks = ChatChunks(META, False)
    first = json.loads(chunks.tool_calls(0, [CallDelta(0, "", "call_1", "weather"), CallDelta(0, '{"ci')]))
    assert first["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}},
        {"index": 0, "function": {"arguments": '{"ci'}},
    ]
    later = json.loads(chunks.tool_calls(0, [CallDelta(1, "{}", "call_2", "time")]))
    assert later["choices"][0]["delta"]["tool_calls"][0]["index"] == 1
    for chunk in (first, later):
        SdkChatChunk.model_validate(chunk)


def test_logprobs_travel_in_the_content_chunks() -> None:
    top = TopLogprob(token="a", logprob=-0.1, bytes=[97])
    entry = TokenLogprobOut(token="a", logprob=-0.1, bytes=[97], top_logprobs=[top])
    chat = json.loads(ChatChunks(META, False).content(0, "a", [entry]))
    sdk = SdkChatChunk.model_validate(chat).choices[0].logprobs
    assert sdk is not None and sdk.content is not None and sdk.content[0].top_logprobs[0].token == "a"
    # a token that is half a character leaves no text yet, but its logprob is sent
    assert "content" not in json.loads(ChatChunks(META, False).content(0, "", [entry]))["choices"][0]["delta"]
    legacy = CompletionLogprobs(
        tokens=["a"], token_logprobs=[-0.1], top_logprobs=[{"a": -0.1}], text_offset=[0]
    )
    completion = json.loads(CompletionChunks(META, False).content(0, "a", legacy))
    assert completion["choices"][0]["logprobs"] == legacy.model_dump()
