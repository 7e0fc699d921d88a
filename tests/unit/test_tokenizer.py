import random

import pytest

from lpu_runtime.tokenizer import ByteTokenizer, IncrementalDetokenizer, Tokenizer

BOS, EOS, PAD = 256, 257, 258


def _as_protocol(tokenizer: Tokenizer) -> Tokenizer:
    return tokenizer


def test_byte_tokenizer_vocabulary() -> None:
    tok = _as_protocol(ByteTokenizer())
    assert tok.vocab_size == 259
    assert tok.bos_id == BOS
    assert tok.eos_ids == frozenset({EOS})
    assert (tok.bos_token, tok.eos_token) == ("<s>", "</s>")
    assert ByteTokenizer.PAD_ID == PAD


def test_encode_emits_utf8_bytes_and_optional_bos() -> None:
    tok = ByteTokenizer()
    assert tok.encode("hé", add_bos=False) == [0x68, 0xC3, 0xA9]
    assert tok.encode("hé", add_bos=True) == [BOS, 0x68, 0xC3, 0xA9]
    assert tok.encode("", add_bos=True) == [BOS]
    assert tok.encode("", add_bos=False) == []


def test_encode_recognises_bos_and_eos_strings_only() -> None:
    tok = ByteTokenizer()
    assert tok.encode("<s>a</s><s>", add_bos=False) == [BOS, ord("a"), EOS, BOS]
    assert tok.encode("<pad>", add_bos=False) == list(b"<pad>")
    assert tok.encode("<s</s>s>", add_bos=False) == [*b"<s", EOS, *b"s>"]


def test_decode_skips_special_tokens_and_replaces_invalid_bytes() -> None:
    tok = ByteTokenizer()
    assert tok.decode([BOS, *"héllo".encode(), EOS, PAD]) == "héllo"
    assert tok.decode([0x61, 0xFF, 0x62]) == "a\ufffdb"


def test_encode_decode_round_trip_keeps_text_outside_special_strings() -> None:
    tok = ByteTokenizer()
    text = "User: ¿qué tal? 🙂\n<s>x</s><pad>"
    assert tok.decode(tok.encode(text, add_bos=True)) == "User: ¿qué tal? 🙂\nx<pad>"


def test_token_bytes() -> None:
    tok = ByteTokenizer()
    assert tok.token_bytes(0) == b"\x00"
    assert tok.token_bytes(255) == b"\xff"
    assert [tok.token_bytes(i) for i in (BOS, EOS, PAD)] == [b"", b"", b""]
    for bad in (-1, 259):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tok.token_bytes(bad)


def test_detokenizer_holds_back_a_split_character() -> None:
    detok = IncrementalDetokenizer(ByteTokenizer())
    pieces = [detok.push(b) for b in "a🙂é".encode()]
    assert pieces == ["a", "", "", "", "🙂", "", "é"]
    assert detok.flush() == ""


def test_detokenizer_replaces_invalid_bytes_as_soon_as_certain() -> None:
    detok = IncrementalDetokenizer(ByteTokenizer())
    assert detok.push(0xFF) == "\ufffd"  # can never start a character
    assert detok.push(0xC3) == ""  # could still become "é"
    assert detok.push(ord("A")) == "\ufffdA"  # the lead byte was not continued
    assert detok.push(0xE2) == ""
    assert detok.push(0x82) == ""
    assert detok.flush() == "\ufffd"  # an incomplete tail at the end


def test_detokenizer_special_tokens_add_nothing() -> None:
    detok = IncrementalDetokenizer(ByteTokenizer())
    assert detok.push(0xC3) == ""
    assert detok.push(EOS) == ""
    assert detok.push(0xA9) == "é"


def _random_stream(rng: random.Random) -> list[int]:
    """Token ids mixing valid characters of every UTF-8 length, raw garbage and special tokens."""
    ids: list[int] = []
    for _ in range(rng.randrange(0, 40)):
        kind = rng.randrange(4)
        if kind == 0:
            ids.extend(chr(rng.choice([rng.randrange(0x80), rng.randrange(0x80, 0x800)])).encode())
        elif kind == 1:
            ids.extend(rng.choice(["€", "𝄞", "中"]).encode()[: rng.randrange(1, 5)])  # maybe truncated
        elif kind == 2:
            ids.append(rng.randrange(256))
        else:
            ids.append(rng.choice([BOS, EOS, PAD]))
    return ids


def test_detokenizer_pieces_join_to_the_one_shot_decode() -> None:
    rng = random.Random(1234)
    tok = ByteTokenizer()
    for _ in range(2000):
        ids = _random_stream(rng)
        detok = IncrementalDetokenizer(tok)
        streamed = "".join(detok.push(i) for i in ids) + detok.flush()
        expected = b"".join(tok.token_bytes(i) for i in ids).decode("utf-8", errors="replace")
        assert streamed == expected, ids


def test_detokenizer_releases_each_valid_character_on_its_last_byte() -> None:
    text = "naïve 日本 𝄞 ok"
    detok = IncrementalDetokenizer(ByteTokenizer())
    emitted = ""
    for i, char in enumerate(text):
        for b in char.encode():
            emitted += detok.push(b)
        assert emitted == text[: i + 1]
