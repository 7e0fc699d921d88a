import random

import pytest

from lpu_runtime.stop import StopMatcher


def _run(stops: list[str], chunks: list[str]) -> tuple[list[tuple[str, bool]], str]:
    """Pushes chunks until a stop; returns each push's result and the final flush ("" after a stop)."""
    matcher = StopMatcher(stops)
    results = []
    for chunk in chunks:
        results.append(matcher.push(chunk))
        if results[-1][1]:
            return results, ""
    return results, matcher.flush()


def test_no_stops_passes_text_straight_through() -> None:
    chunks = ["Hel", "lo", "", " wor", "ld\n"]
    results, tail = _run([], chunks)
    assert results == [(chunk, False) for chunk in chunks]
    assert tail == ""


def test_stop_split_across_chunks() -> None:
    results, _ = _run(["STOP"], ["hello S", "T", "O", "P and more"])
    assert results == [("hello ", False), ("", False), ("", False), ("", True)]


def test_text_after_a_stop_in_the_same_chunk_is_dropped() -> None:
    results, _ = _run(["\n\n"], ["one\n", "\ntwo"])
    assert results == [("one", False), ("", True)]


def test_held_candidate_is_released_when_it_stops_matching() -> None:
    results, tail = _run(["abc"], ["xab", "d", "e"])
    assert results == [("x", False), ("abd", False), ("e", False)]
    assert tail == ""


def test_overlapping_candidates_resolve_to_the_one_that_completes() -> None:
    results, _ = _run(["abc", "abd"], ["ab", "d"])
    assert results == [("", False), ("", True)]


def test_self_overlapping_stop_keeps_only_the_live_tail() -> None:
    results, _ = _run(["aab"], ["a", "a", "a", "b"])
    assert results == [("", False), ("", False), ("a", False), ("", True)]


def test_earliest_match_wins_among_several_stops() -> None:
    for stops in (["world", "lo w"], ["lo w", "world"]):
        assert _run(stops, ["hello world"])[0] == [("hel", True)]


def test_flush_releases_a_held_partial_stop() -> None:
    results, tail = _run(["end"], ["the e", "n"])
    assert results == [("the ", False), ("", False)]
    assert tail == "en"


def test_push_after_a_stop_is_an_error() -> None:
    matcher = StopMatcher(["x"])
    assert matcher.push("ax") == ("a", True)
    with pytest.raises(RuntimeError):
        matcher.push("more")


def test_empty_stop_string_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        StopMatcher(["ok", ""])


def _reference(stops: list[str], chunks: list[str]) -> tuple[str, bool]:
    """What the whole stream should yield: the text before the first stop to complete at a chunk end."""
    seen = ""
    for chunk in chunks:
        seen += chunk
        starts = [i for i in (seen.find(s) for s in stops) if i >= 0]
        if starts:
            return seen[: min(starts)], True
    return seen, False


def test_random_streams_match_the_reference_and_hold_no_more_than_needed() -> None:
    rng = random.Random(99)
    for _ in range(3000):
        stops = ["".join(rng.choices("ab", k=rng.randint(1, 4))) for _ in range(rng.randint(0, 3))]
        text = "".join(rng.choices("abc", k=rng.randint(0, 20)))
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 6))))
        chunks = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        matcher = StopMatcher(stops)
        emitted, seen, stopped = "", "", False
        for chunk in chunks:
            piece, stopped = matcher.push(chunk)
            emitted += piece
            seen += chunk
            if stopped:
                break
            held = seen[len(emitted) :]
            assert seen.startswith(emitted)
            # Whatever is held must still be able to grow into a stop string.
            assert held == "" or any(s.startswith(held) for s in stops), (stops, chunks)
        if not stopped:
            emitted += matcher.flush()
        assert (emitted, stopped) == _reference(stops, chunks), (stops, chunks)
