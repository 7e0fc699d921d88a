"""Per-request token sampling: logit bias, penalties, min_tokens, a grammar's mask, then greedy or temperature /
top-k / top-p, with a private generator; and the logprobs of the distribution the token was drawn from."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
from numpy.typing import NDArray

from lpu_runtime.grammar import GrammarMatcher
from lpu_runtime.types import SamplingParams, TokenLogprob


class Sampler:
    """Picks one token per call from a request's logits.

    Each sampler owns its generator so a request's tokens depend only on its prompt and seed, not on which
    other requests share the batch or in what order the engine samples them. Everything that shapes the
    distribution happens here, on the host, on a float64 copy of the logits: the chips' numerics never change.
    """

    def __init__(
        self,
        params: SamplingParams,
        vocab_size: int,
        *,
        banned_ids: frozenset[int] = frozenset(),
        eos_ids: Collection[int] = (),
        prompt_ids: Collection[int] = (),
        grammar: GrammarMatcher | None = None,
    ) -> None:
        """eos_ids: refused until min_tokens (with stop_token_ids); prompt_ids: what repetition_penalty counts
        besides the output; grammar: the request's compiled grammar, advanced by every token sampled."""
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        out_of_range = sorted(i for i in banned_ids if not 0 <= i < vocab_size)
        if out_of_range:
            raise ValueError(f"banned ids {out_of_range} are outside the vocabulary [0, {vocab_size})")
        self._params = params
        self._vocab_size = vocab_size
        self._banned = np.array(sorted(banned_ids), dtype=np.int64)  # (n_banned,) int64
        self._banned_set = frozenset(banned_ids)
        self._counts = np.zeros(vocab_size, dtype=np.int64)  # (vocab,) int64, times each id was returned
        self._generated = 0
        self._rng = np.random.default_rng(params.seed)  # seed None draws fresh OS entropy
        self._bias_ids = np.array([t for t, _ in params.logit_bias], dtype=np.int64)  # (n_bias,) int64
        self._bias = np.array([b for _, b in params.logit_bias], dtype=np.float64)  # (n_bias,) float64
        self._ends = np.array(sorted({*eos_ids, *params.stop_token_ids}), dtype=np.int64)  # (n_end,) int64
        self._in_prompt = np.zeros(vocab_size, dtype=np.bool_)  # (vocab,) bool
        self._in_prompt[np.asarray(list(prompt_ids), dtype=np.int64)] = True
        self._grammar = grammar
        self._plain_greedy = params.greedy and not (
            params.frequency_penalty
            or params.presence_penalty
            or params.repetition_penalty != 1.0
            or params.min_tokens
            or params.logit_bias
            or params.logprobs is not None
            or grammar is not None
        )
        self.logprob: TokenLogprob | None = None  # the last sampled token's, when params.logprobs is set

    def sample(self, logits: NDArray[np.float32]) -> int:
        """Returns the next token id for `logits` of shape (vocab,) and counts it for later penalties."""
        if logits.shape != (self._vocab_size,):
            raise ValueError(f"logits must have shape ({self._vocab_size},), got {logits.shape}")
        if self._plain_greedy:
            # One pass: argmax returns the first NaN if there is one, so checking its pick is enough.
            token = int(np.argmax(logits))
            best = logits[token]
            if np.isfinite(best) and token not in self._banned_set:
                return self._took(token)
        scores = self._penalised(logits)  # (vocab,) float64
        if np.isnan(scores).any() or np.isposinf(scores).any():
            raise ValueError("logits contain NaN or +inf")
        if np.isneginf(scores).all():
            raise ValueError("every token is banned or has -inf logit")
        # argmax returns the first maximum, so ties go to the lowest id.
        if self._params.greedy:
            token = int(np.argmax(scores))
            if self._params.logprobs is not None:
                # Greedy takes the argmax of the processed scores; its logprobs are theirs at temperature 1.
                finite = np.flatnonzero(np.isfinite(scores))  # (n,) int64
                z = scores[finite] - scores[finite].max()
                self.logprob = self._logprob(token, finite, np.exp(z) / np.exp(z).sum())
        else:
            # The best score is 0 before dividing, so a tiny temperature sends the rest to -inf (probability
            # 0), never inf - inf = NaN: temperature -> 0 becomes greedy as the limit says.
            with np.errstate(over="ignore"):
                z = (scores - scores.max()) / self._params.temperature  # (vocab,) float64
            ids, probs = self._distribution(z)
            token = self._draw(ids, probs)
            if self._params.logprobs is not None:
                self.logprob = self._logprob(token, ids, probs)
        return self._took(token)

    def _took(self, token: int) -> int:
        self._counts[token] += 1
        self._generated += 1
        if self._grammar is not None:
            self._grammar.consume(token)
        return token

    def _penalised(self, logits: NDArray[np.float32]) -> NDArray[np.float64]:
        scores = logits.astype(np.float64)  # (vocab,) float64, a copy
        p = self._params
        if len(self._bias_ids):
            np.add.at(scores, self._bias_ids, self._bias)
        if p.repetition_penalty != 1.0:
            # vLLM's and HF's definition: prompt and output tokens alike, dividing positive logits and
            # multiplying negative ones, so a seen token always becomes less likely.
            seen = self._in_prompt | (self._counts > 0)
            scores[seen] = np.where(
                scores[seen] > 0, scores[seen] / p.repetition_penalty, scores[seen] * p.repetition_penalty
            )
        if p.frequency_penalty or p.presence_penalty:
            # OpenAI's definition: only tokens this request generated count, not the prompt.
            scores -= p.frequency_penalty * self._counts + p.presence_penalty * (self._counts > 0)
        scores[self._banned] = -np.inf
        if self._grammar is not None:
            self._grammar.mask_into(scores)
        if self._generated < p.min_tokens and len(self._ends):
            ends = scores[self._ends].copy()
            scores[self._ends] = -np.inf
            if np.isneginf(scores).all():
                scores[self._ends] = ends  # a finished grammar allows only EOS: the grammar wins
        return scores

    def _distribution(self, scores: NDArray[np.float64]) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """The ids top-k and top-p keep and their renormalised probabilities: what the draw samples from."""
        ids = self._top_k_ids(scores)  # (n,) int64, ascending
        z = scores[ids]  # (n,) float64
        probs = np.exp(z - z.max())  # (n,) float64
        probs /= probs.sum()
        if self._params.top_p < 1.0:
            # Stable sort on ascending ids: equal probabilities keep the lower id first.
            order = np.argsort(-probs, kind="stable")  # (n,) int64
            mass = np.cumsum(probs[order])  # (n,) float64
            n_keep = min(int(np.searchsorted(mass, self._params.top_p, side="left")) + 1, len(order))
            ids, probs = ids[order[:n_keep]], probs[order[:n_keep]]
            probs = probs / probs.sum()
        return ids, probs

    def _draw(self, ids: NDArray[np.int64], probs: NDArray[np.float64]) -> int:
        cdf = np.cumsum(probs)  # (n,) float64
        # Normalising to an exact 1.0 at the end keeps the draw (in [0, 1)) off any zero-mass tail.
        cdf /= cdf[-1]
        return int(ids[np.searchsorted(cdf, self._rng.random(), side="right")])

    def _logprob(self, token: int, ids: NDArray[np.int64], probs: NDArray[np.float64]) -> TokenLogprob:
        """`token`'s log probability among (ids, probs) and the k most likely of them (k = params.logprobs);
        tokens of probability 0 (masked, truncated) are never listed."""
        k = self._params.logprobs or 0
        with np.errstate(divide="ignore"):
            logp = np.log(probs)  # (n,) float64
        where = np.flatnonzero(ids == token)
        top: tuple[tuple[int, float], ...] = ()
        if k:
            live = np.flatnonzero(probs > 0)  # (m,) int64
            if len(live) > k:  # a partition first: a full sort of a 50k vocabulary per token is not free
                live = np.sort(live[np.argpartition(-probs[live], k - 1)[:k]])
            best = live[np.argsort(-probs[live], kind="stable")]
            top = tuple((int(ids[i]), float(logp[i])) for i in best)
        return TokenLogprob(token, float(logp[where[0]]) if len(where) else float("-inf"), top)

    def _top_k_ids(self, scores: NDArray[np.float64]) -> NDArray[np.int64]:
        k = self._params.top_k
        if k == 0 or k >= self._vocab_size:
            return np.arange(self._vocab_size, dtype=np.int64)
        kth = np.partition(scores, self._vocab_size - k)[self._vocab_size - k]  # the k-th largest score
        above = np.flatnonzero(scores > kth)  # (< k,) int64
        # Exactly k survivors: ties at the boundary go to the lowest ids, as greedy's would.
        ties = np.flatnonzero(scores == kth)[: k - len(above)]
        return np.sort(np.concatenate([above, ties]))
