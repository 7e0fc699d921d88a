import json

import numpy as np
import pytest
from numpy.typing import NDArray

from lpu_runtime.grammar import GrammarCompiler, GrammarVocab
from lpu_runtime.sampler import Sampler
from lpu_runtime.types import GrammarSpec, SamplingParams

VOCAB = 259


def _random_logits(seed: int, n: int = VOCAB) -> NDArray[np.float32]:
    return np.random.default_rng(seed).normal(0.0, 2.0, size=n).astype(np.float32)  # (n,) float32


def _draws(sampler: Sampler, logits: NDArray[np.float32], n: int) -> list[int]:
    return [sampler.sample(logits) for _ in range(n)]


def _softmax(x: NDArray[np.float64]) -> NDArray[np.float64]:
    e = np.exp(x - x.max())
    probs: NDArray[np.float64] = e / e.sum()
    return probs


def _chi_square(counts: NDArray[np.int64], probs: NDArray[np.float64]) -> float:
    """Pearson's statistic over the categories the distribution allows."""
    expected = probs * counts.sum()
    allowed = probs > 0
    assert counts[~allowed].sum() == 0, "drew a token the distribution excludes"
    return float((((counts - expected) ** 2)[allowed] / expected[allowed]).sum())


def test_same_seed_gives_the_same_tokens_whatever_else_runs() -> None:
    logits = _random_logits(0)
    params = SamplingParams(temperature=1.0, seed=42)
    alone = _draws(Sampler(params, VOCAB), logits, 50)

    twin, other = Sampler(params, VOCAB), Sampler(SamplingParams(temperature=1.0, seed=7), VOCAB)
    np.random.seed(3)  # the global generator must not matter
    interleaved = []
    for _ in range(50):
        other.sample(logits)
        np.random.random(10)
        interleaved.append(twin.sample(logits))
    assert interleaved == alone


def test_different_seeds_give_different_tokens() -> None:
    logits = np.zeros(VOCAB, dtype=np.float32)  # uniform: 50 draws collide with negligible chance
    a = _draws(Sampler(SamplingParams(seed=1), VOCAB), logits, 50)
    b = _draws(Sampler(SamplingParams(seed=2), VOCAB), logits, 50)
    assert a != b


def test_no_seed_draws_fresh_entropy() -> None:
    logits = np.zeros(VOCAB, dtype=np.float32)
    a = _draws(Sampler(SamplingParams(), VOCAB), logits, 50)
    b = _draws(Sampler(SamplingParams(), VOCAB), logits, 50)
    assert a != b


def test_greedy_picks_argmax_and_breaks_ties_on_the_lowest_id() -> None:
    sampler = Sampler(SamplingParams(temperature=0.0), VOCAB)
    for seed in range(20):
        logits = _random_logits(seed)
        assert sampler.sample(logits) == int(np.argmax(logits))
    tied = np.zeros(VOCAB, dtype=np.float32)
    tied[[17, 5, 200]] = 3.0
    assert sampler.sample(tied) == 5


@pytest.mark.parametrize(
    "params",
    [SamplingParams(temperature=1.5, top_k=1, seed=3), SamplingParams(temperature=1.5, top_p=1e-9, seed=3)],
    ids=["top_k=1", "top_p=1e-9"],
)
def test_single_candidate_filters_equal_greedy(params: SamplingParams) -> None:
    sampler = Sampler(params, VOCAB)
    for seed in range(20):
        logits = _random_logits(seed)
        assert sampler.sample(logits) == int(np.argmax(logits))
    tied = np.zeros(VOCAB, dtype=np.float32)
    tied[[17, 5, 200]] = 3.0
    assert set(_draws(sampler, tied, 30)) == {5}


def test_top_p_mass_reached_exactly_keeps_no_more() -> None:
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=4), 2)
    # Each token holds exactly half the mass, so the first (lowest id) already reaches top_p.
    assert set(_draws(sampler, np.zeros(2, dtype=np.float32), 30)) == {0}


def test_temperature_sampling_follows_the_softmax() -> None:
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=0.8, seed=11), len(logits))
    counts = np.bincount(_draws(sampler, logits, 20_000), minlength=len(logits))
    # 20.5 is the 99.9th percentile of chi-square with 5 degrees of freedom.
    assert _chi_square(counts, _softmax(logits.astype(np.float64) / 0.8)) < 20.5


def test_top_k_renormalises_over_the_k_best() -> None:
    logits = np.array([0.0, 2.0, -1.0, 1.0, 1.5, -2.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=1.0, top_k=3, seed=5), len(logits))
    counts = np.bincount(_draws(sampler, logits, 10_000), minlength=len(logits))
    expected = np.zeros(len(logits))
    expected[[1, 3, 4]] = _softmax(logits[[1, 3, 4]].astype(np.float64))
    assert _chi_square(counts, expected) < 13.8  # 99.9th percentile, 2 degrees of freedom


def test_top_p_keeps_the_smallest_nucleus_reaching_the_mass() -> None:
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    logits = np.log(probs).astype(np.float32)
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.7, seed=9), len(logits))
    counts = np.bincount(_draws(sampler, logits, 10_000), minlength=len(logits))
    # 0.5 alone is short of 0.7; 0.5 + 0.3 reaches it, so ids 1 and 3 remain, renormalised.
    assert _chi_square(counts, np.array([0.0, 0.625, 0.0, 0.375])) < 10.9  # 99.9th percentile, 1 dof


def test_frequency_penalty_grows_with_each_repeat() -> None:
    logits = np.array([1.0, 0.9, 0.0], dtype=np.float32)
    plain = Sampler(SamplingParams(temperature=0.0), 3)
    assert _draws(plain, logits, 4) == [0, 0, 0, 0]
    penalised = Sampler(SamplingParams(temperature=0.0, frequency_penalty=0.5), 3)
    # id 0: 1.0, 0.5, 0.5, 0.0; id 1: 0.9, 0.9, 0.4, 0.4.
    assert _draws(penalised, logits, 4) == [0, 1, 0, 1]


def test_presence_penalty_applies_once_per_seen_token() -> None:
    logits = np.array([1.0, 0.9, 0.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=0.0, presence_penalty=0.2), 3)
    # After both ids appeared their scores are 0.8 and 0.7 for good: the penalty does not grow.
    assert _draws(sampler, logits, 5) == [0, 1, 0, 0, 0]


def test_penalties_combine_and_may_be_negative() -> None:
    logits = np.array([1.0, 0.9, 0.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=0.0, frequency_penalty=0.5, presence_penalty=-0.6), 3)
    # A token seen n times scores logit - 0.5 n + 0.6: id 0 goes 1.0, 1.1, 0.6; id 1 goes 0.9, 1.0, 0.5.
    assert _draws(sampler, logits, 5) == [0, 0, 1, 1, 0]


def test_banned_ids_are_never_returned() -> None:
    logits = np.zeros(VOCAB, dtype=np.float32)
    logits[258] = 50.0  # the model strongly prefers <pad>
    greedy = Sampler(SamplingParams(temperature=0.0), VOCAB, banned_ids=frozenset({258}))
    assert greedy.sample(logits) != 258
    sampled = Sampler(SamplingParams(temperature=2.0, seed=0), VOCAB, banned_ids=frozenset({258, 0}))
    assert not {0, 258} & set(_draws(sampled, logits, 2000))


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Sampler(SamplingParams(), 10, banned_ids=frozenset({10}))
    sampler = Sampler(SamplingParams(seed=0), 4)
    with pytest.raises(ValueError, match="shape"):
        sampler.sample(np.zeros(5, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        sampler.sample(np.array([0.0, np.nan, 0.0, 0.0], dtype=np.float32))
    with pytest.raises(ValueError, match="every token"):
        Sampler(SamplingParams(seed=0), 2, banned_ids=frozenset({0, 1})).sample(np.zeros(2, dtype=np.float32))


def test_a_vanishing_temperature_is_greedy_not_nan() -> None:
    logits = np.random.default_rng(0).standard_normal(64).astype(np.float32) * 8
    for temperature in (1e-307, 5e-324):
        sampler = Sampler(SamplingParams(temperature=temperature, seed=1), 64)
        assert [sampler.sample(logits) for _ in range(5)] == [int(np.argmax(logits))] * 5


def test_logit_bias_bans_and_forces_tokens() -> None:
    logits = _random_logits(3, 16)
    best = int(np.argmax(logits))
    banned = Sampler(SamplingParams(temperature=0, logit_bias=((best, -100.0),)), 16)
    assert banned.sample(logits) != best
    forced = Sampler(SamplingParams(seed=0, logit_bias=((5, 100.0),)), 16)
    assert _draws(forced, logits, 20) == [5] * 20


def test_min_tokens_refuses_eos_and_stop_token_ids_until_reached() -> None:
    logits = np.zeros(8, dtype=np.float32)
    logits[[0, 1]] = 10.0  # EOS (0) and a stop token id (1) are by far the likeliest
    params = SamplingParams(temperature=0, min_tokens=3, stop_token_ids=(1,))
    sampler = Sampler(params, 8, eos_ids=(0,))
    assert [sampler.sample(logits) for _ in range(4)] == [2, 2, 2, 0]


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    logits = np.array([2.0, 1.5, -1.0, 0.5], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=0, repetition_penalty=2.0, logprobs=4), 4, prompt_ids=(2,))
    # the prompt's token 2 is penalised from the start, the output's token 0 once generated (not again after)
    for expected_token, processed in (
        (0, [2.0, 1.5, -2.0, 0.5]),
        (1, [1.0, 1.5, -2.0, 0.5]),
        (0, [1.0, 0.75, -2.0, 0.5]),
    ):
        assert sampler.sample(logits) == expected_token
        assert sampler.logprob is not None
        assert dict(sampler.logprob.top) == pytest.approx(
            dict(enumerate(np.log(_softmax(np.array(processed)))))
        )


def test_logprobs_are_those_of_the_distribution_drawn_from() -> None:
    logits = _random_logits(4, 32)
    sampler = Sampler(SamplingParams(seed=2, top_k=3, logprobs=5), 32)
    token = sampler.sample(logits)
    entry = sampler.logprob
    assert entry is not None and entry.token_id == token
    kept = np.sort(np.argsort(-logits)[:3])
    assert sorted(t for t, _ in entry.top) == kept.tolist()  # only what top-k could draw, however many asked
    assert sum(np.exp(lp) for _, lp in entry.top) == pytest.approx(1.0)
    assert dict(entry.top)[token] == entry.logprob
    assert [lp for _, lp in entry.top] == sorted((lp for _, lp in entry.top), reverse=True)


def test_a_grammar_masks_every_token_it_does_not_allow() -> None:
    vocab = GrammarVocab((*(bytes([i]) for i in range(256)), b""), (256,))
    ok = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    spec = GrammarSpec("json_schema", json.dumps({**ok, "additionalProperties": False}))
    compiler = GrammarCompiler(vocab)
    for seed in range(4):
        sampler = Sampler(
            SamplingParams(seed=seed, min_tokens=2), 257, eos_ids=(256,), grammar=compiler.matcher(spec)
        )
        text = b""
        while (token := sampler.sample(_random_logits(seed + len(text), 257))) != 256:
            text += bytes([token])
        assert json.loads(text) in ({"ok": True}, {"ok": False})


def test_min_tokens_gives_way_to_a_grammar_that_allows_only_eos() -> None:
    vocab = GrammarVocab((b"{", b"}", b""), (2,))
    matcher = GrammarCompiler(vocab).matcher(
        GrammarSpec("json_schema", '{"type": "object", "maxProperties": 0}')
    )
    sampler = Sampler(SamplingParams(temperature=0, min_tokens=5), 3, eos_ids=(2,), grammar=matcher)
    assert [sampler.sample(np.zeros(3, dtype=np.float32)) for _ in range(3)] == [0, 1, 2]
