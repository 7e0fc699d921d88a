"""Per-request token sampling: penalties, greedy or temperature / top-k / top-p, with a private generator."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from lpu_runtime.types import SamplingParams


class Sampler:
    """Picks one token per call from a request's logits.

    Each sampler owns its generator so a request's tokens depend only on its prompt and seed, not on which
    other requests share the batch or in what order the engine samples them.
    """

    def __init__(
        self, params: SamplingParams, vocab_size: int, *, banned_ids: frozenset[int] = frozenset()
    ) -> None:
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
        self._rng = np.random.default_rng(params.seed)  # seed None draws fresh OS entropy

    def sample(self, logits: NDArray[np.float32]) -> int:
        """Returns the next token id for `logits` of shape (vocab,) and counts it for later penalties."""
        if logits.shape != (self._vocab_size,):
            raise ValueError(f"logits must have shape ({self._vocab_size},), got {logits.shape}")
        p = self._params
        if p.greedy and not (p.frequency_penalty or p.presence_penalty):
            # One pass: argmax returns the first NaN if there is one, so checking its pick is enough.
            token = int(np.argmax(logits))
            best = logits[token]
            if np.isfinite(best) and token not in self._banned_set:
                self._counts[token] += 1
                return token
        scores = self._penalised(logits)  # (vocab,) float64
        if np.isnan(scores).any() or np.isposinf(scores).any():
            raise ValueError("logits contain NaN or +inf")
        if np.isneginf(scores).all():
            raise ValueError("every token is banned or has -inf logit")
        # argmax returns the first maximum, so ties go to the lowest id.
        token = (
            int(np.argmax(scores)) if self._params.greedy else self._draw(scores / self._params.temperature)
        )
        self._counts[token] += 1
        return token

    def _penalised(self, logits: NDArray[np.float32]) -> NDArray[np.float64]:
        scores = logits.astype(np.float64)  # (vocab,) float64, a copy
        p = self._params
        if p.frequency_penalty or p.presence_penalty:
            # OpenAI's definition: only tokens this request generated count, not the prompt.
            scores -= p.frequency_penalty * self._counts + p.presence_penalty * (self._counts > 0)
        scores[self._banned] = -np.inf
        return scores

    def _draw(self, scores: NDArray[np.float64]) -> int:
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
        cdf = np.cumsum(probs)  # (n,) float64
        # Normalising to an exact 1.0 at the end keeps the draw (in [0, 1)) off any zero-mass tail.
        cdf /= cdf[-1]
        return int(ids[np.searchsorted(cdf, self._rng.random(), side="right")])

    def _top_k_ids(self, scores: NDArray[np.float64]) -> NDArray[np.int64]:
        k = self._params.top_k
        if k == 0 or k >= self._vocab_size:
            return np.arange(self._vocab_size, dtype=np.int64)
        kth = np.partition(scores, self._vocab_size - k)[self._vocab_size - k]  # the k-th largest score
        above = np.flatnonzero(scores > kth)  # (< k,) int64
        # Exactly k survivors: ties at the boundary go to the lowest ids, as greedy's would.
        ties = np.flatnonzero(scores == kth)[: k - len(above)]
        return np.sort(np.concatenate([above, ties]))
