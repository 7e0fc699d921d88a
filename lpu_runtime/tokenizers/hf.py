"""HuggingFace `tokenizer.json` through the `tokenizers` library, with the special tokens and BOS/EOS of
`tokenizer_config.json` and the extra EOS ids of `generation_config.json`.

The library encodes and decodes; what it cannot say is which bytes one token adds to a stream, so each
token's bytes are derived once from the decoder `tokenizer.json` declares: byte-level BPE pieces map
back through GPT-2's alphabet, SentencePiece-style pieces turn "▁" into a space and `<0xNN>` into a byte.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tokenizers

from lpu_runtime.errors import ModelFileError
from lpu_runtime.tokenizer import Span
from lpu_runtime.tokenizers.bpe import byte_level_bytes
from lpu_runtime.tokenizers.vocab import BYTE_PIECE, VocabTokenizer


def _decoder_types(decoder: Any) -> list[dict[str, Any]]:
    if not isinstance(decoder, dict):
        return []
    if decoder.get("type") == "Sequence":
        return [d for sub in decoder.get("decoders", []) for d in _decoder_types(sub)]
    return [decoder]


def _token_text(value: Any) -> str | None:
    """tokenizer_config writes special tokens as a string or as an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _ids(value: Any) -> set[int]:
    if isinstance(value, int):
        return {value}
    if isinstance(value, list):
        return {v for v in value if isinstance(v, int)}
    return set()


class HFTokenizer(VocabTokenizer):
    def __init__(
        self,
        path: Path,
        config: Mapping[str, Any],
        generation_config: Mapping[str, Any],
    ) -> None:
        self.path = path  # `lpu export` copies it and the files beside it
        try:
            text = path.read_text(encoding="utf-8")
            spec = json.loads(text)
            self._tok = tokenizers.Tokenizer.from_str(text)
            self._literal_tok: tokenizers.Tokenizer | None = None
        except Exception as exc:  # the library raises plain Exception for malformed files
            raise ModelFileError(
                path, f"is not a readable tokenizer.json ({' '.join(str(exc).split())})"
            ) from None
        decoders = _decoder_types(spec.get("decoder"))
        kinds = {d.get("type") for d in decoders}
        byte_level = "ByteLevel" in kinds
        metaspace = next((d for d in decoders if d.get("type") == "Metaspace"), None)
        space_char = metaspace.get("replacement", "▁") if metaspace else "▁"
        strip = any(d.get("type") == "Strip" and d.get("start", 0) > 0 for d in decoders) or bool(
            metaspace
            and metaspace.get("prepend_scheme", "always") != "never"
            and metaspace.get("add_prefix_space", True)
        )

        added = self._tok.get_added_tokens_decoder()
        size = self._tok.get_vocab_size(with_added_tokens=True)
        size = max([size, *(i + 1 for i in added)])
        pieces: list[bytes] = []
        for i in range(size):
            token = added.get(i)
            if token is not None:
                pieces.append(b"" if token.special else token.content.encode("utf-8"))
                continue
            piece = self._tok.id_to_token(i)
            if piece is None:
                pieces.append(b"")
            elif byte_level:
                raw = byte_level_bytes(piece)
                pieces.append(raw if raw is not None else piece.encode("utf-8"))
            elif (byte := BYTE_PIECE.fullmatch(piece)) is not None:
                pieces.append(bytes((int(byte.group(1), 16),)))
            else:
                pieces.append(piece.replace(space_char, " ").encode("utf-8"))

        specials = {t.content: i for i, t in added.items()}
        bos_text = _token_text(config.get("bos_token"))
        bos_id = self._tok.token_to_id(bos_text) if bos_text else None
        eos_ids = _ids(generation_config.get("eos_token_id"))
        eos_text = _token_text(config.get("eos_token"))
        eos_id = self._tok.token_to_id(eos_text) if eos_text else None
        if eos_id is not None:
            eos_ids.add(eos_id)
        if "add_bos_token" in config:
            adds_bos = bool(config["add_bos_token"])
        else:
            # No flag (Llama 3 style): the post-processor decides, as it does for add_special_tokens=True.
            adds_bos = bos_id is not None and self._tok.encode("", add_special_tokens=True).ids[:1] == [
                bos_id
            ]
        super().__init__(
            pieces=pieces,
            specials=specials,
            bos_id=bos_id,
            eos_ids=frozenset(eos_ids),
            adds_bos=adds_bos,
            strip_leading_space=strip,
            eos_id=eos_id,
            bos_token=bos_text or "",
            eos_token=eos_text,
        )

    def encode(self, text: str, *, add_bos: bool, plain_spans: Sequence[Span] = ()) -> list[int]:
        ids: list[int] = [self.bos_id] if add_bos and self.bos_id is not None else []
        if not plain_spans:
            return ids + self._tok.encode(text, add_special_tokens=False).ids
        # The library splits at added tokens before anything else, so splitting here (skipping the plain
        # spans) and encoding each run of text with special parsing off gives the same ids wherever the text
        # has no plain span.
        for part, special in self._fragments(text, plain_spans):
            if special is not None:
                ids.append(special)
            else:
                ids.extend(self._literal().encode(part, add_special_tokens=False).ids)
        return ids

    def _literal(self) -> tokenizers.Tokenizer:
        """A copy of the library tokenizer that reads special-token strings as plain text."""
        if self._literal_tok is None:
            literal = tokenizers.Tokenizer.from_str(self._tok.to_str())
            literal.encode_special_tokens = True
            self._literal_tok = literal
        return self._literal_tok

    def decode(self, ids: Sequence[int]) -> str:
        for i in ids:
            self.token_bytes(i)  # the same range check as every vocabulary
        return str(self._tok.decode(list(ids), skip_special_tokens=True))


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(path, f"is not valid JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ModelFileError(path, "does not hold a JSON object")
    return data


def load_hf_tokenizer(tokenizer_json: Path) -> HFTokenizer:
    folder = tokenizer_json.parent
    return HFTokenizer(
        tokenizer_json,
        _read_json(folder / "tokenizer_config.json"),
        _read_json(folder / "generation_config.json"),
    )
