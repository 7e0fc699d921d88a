"""Token logprobs in the OpenAI API's two shapes: chat's list of {token, logprob, bytes, top_logprobs} and the
legacy completions API's parallel lists. Tokens are named by the text of their bytes (a token that ends inside
a multi-byte character shows U+FFFD; `bytes` is exact). The values are those of the distribution the sampler
drew from: after logit_bias, penalties, the grammar's mask, temperature, top-k and top-p (docs/structured-outputs.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lpu_runtime import TokenLogprob
from server.protocol import CompletionLogprobs, TokenLogprobOut, TopLogprob

TokenBytes = Callable[[int], bytes]


class LogprobFormatter:
    def __init__(self, token_bytes: TokenBytes) -> None:
        self.token_bytes = token_bytes

    def _named(self, token: int, logprob: float) -> TopLogprob:
        raw = self.token_bytes(token)
        return TopLogprob(token=raw.decode("utf-8", errors="replace"), logprob=logprob, bytes=list(raw))

    def chat(self, entries: Sequence[TokenLogprob]) -> list[TokenLogprobOut]:
        return [
            TokenLogprobOut(
                **self._named(e.token_id, e.logprob).model_dump(),
                top_logprobs=[self._named(t, lp) for t, lp in e.top],
            )
            for e in entries
        ]

    def completion(self, entries: Sequence[TokenLogprob], offset: int) -> CompletionLogprobs:
        """`offset`: where the first entry's token starts in the choice's text."""
        out = CompletionLogprobs()
        for e in entries:
            token = self._named(e.token_id, e.logprob).token
            out.tokens.append(token)
            out.token_logprobs.append(e.logprob)
            top: dict[str, float] = {}
            for t, lp in e.top:
                top.setdefault(self._named(t, lp).token, lp)
            out.top_logprobs.append(top)
            out.text_offset.append(offset)
            offset += len(token)
        return out
