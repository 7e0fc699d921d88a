"""llama2.c `tokenizer.bin`: int32 max_token_length, then per token a float32 score, an int32 length and
that many bytes. Ids follow the SentencePiece model it was exported from (0 <unk>, 1 <s>, 2 </s>, then
256 `<0xNN>` byte pieces); the exporter wrote "▁" as a plain space and BOS/EOS as "\\n<s>\\n"/"\\n</s>\\n".
"""

from __future__ import annotations

import struct
from pathlib import Path

from lpu_runtime.errors import ModelFileError
from lpu_runtime.tokenizers.spm import SPACE, SentencePieceTokenizer
from lpu_runtime.tokenizers.vocab import BYTE_PIECE, TokenType

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
_SPECIAL_NAMES = {UNK_ID: "<unk>", BOS_ID: "<s>", EOS_ID: "</s>"}


def load_llama2c_tokenizer(path: str | Path) -> SentencePieceTokenizer:
    """Reads a llama2.c tokenizer.bin; the vocabulary size is however many records the file holds."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(path, f"cannot read the llama2.c tokenizer ({exc.strerror})") from None
    if len(data) < 4:
        raise ModelFileError(path, "is too short to be a llama2.c tokenizer.bin")
    (max_len,) = struct.unpack_from("<i", data, 0)
    if not 0 < max_len <= 1024:
        raise ModelFileError(path, f"is not a llama2.c tokenizer.bin (max_token_length {max_len})")
    tokens: list[str] = []
    scores: list[float] = []
    pos = 4
    while pos < len(data):
        if pos + 8 > len(data):
            raise ModelFileError(path, f"is truncated inside the record of token {len(tokens)}")
        score, length = struct.unpack_from("<fi", data, pos)
        pos += 8
        if not 0 <= length <= max_len or pos + length > len(data):
            raise ModelFileError(
                path, f"token {len(tokens)} has length {length}: the file is truncated or corrupt"
            )
        tokens.append(data[pos : pos + length].decode("utf-8", errors="surrogateescape"))
        scores.append(score)
        pos += length
    if len(tokens) <= EOS_ID:
        raise ModelFileError(path, f"holds only {len(tokens)} tokens")
    types: list[int] = []
    for i, text in enumerate(tokens):
        if i in _SPECIAL_NAMES:
            tokens[i] = _SPECIAL_NAMES[i]
            types.append(TokenType.UNKNOWN if i == UNK_ID else TokenType.CONTROL)
        elif BYTE_PIECE.fullmatch(text):
            types.append(TokenType.BYTE)
        else:
            tokens[i] = text.replace(" ", SPACE)
            types.append(TokenType.NORMAL)
    return SentencePieceTokenizer(
        tokens=tokens,
        scores=scores,
        types=types,
        bos_id=BOS_ID,
        eos_ids=frozenset({EOS_ID}),
        unk_id=UNK_ID,
        adds_bos=True,
        add_space_prefix=True,
    )
