"""The BEiT-3 text tokenizer: SentencePiece pieces with the XLM-R (fairseq) id mapping.

The official release tokenizes with ``XLMRobertaTokenizer(beit3.spm)``, whose ids are the fairseq dictionary
order: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, then SentencePiece piece ``k`` (k >= 3) -> ``k + 1``;
the piece ids 0 (``<unk>``), 1 (``<s>``) and 2 (``</s>``) map to 3, 0 and 2. ``<mask>`` follows the pieces
(64001 for the 64,000-piece ``beit3.spm``). omtseg adds ``<WLS>`` (64002), a row of the 64010-row text table
that the official model never used, for the learnable class-prompt token.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import sentencepiece as spm

BOS_ID = 0
PAD_ID = 1
EOS_ID = 2
UNK_ID = 3
MASK_ID = 64001
WLS_ID = 64002
"""Id of the ``<WLS>`` class-prompt token (first id after ``<mask>``)."""

_FAIRSEQ_OFFSET = 1


def packaged_spm_path() -> Path:
    """Path of the packaged official ``beit3.spm`` (see ``omtseg/assets/NOTICE.md``)."""
    return Path(str(resources.files("omtseg").joinpath("assets/beit3.spm")))


class Beit3Tokenizer:
    """Text -> BEiT-3 token ids.

    Args:
        spm_path: a SentencePiece model file; None reads the packaged official ``beit3.spm``.

    Raises:
        FileNotFoundError: ``spm_path`` does not exist.
        ValueError: the file is not a SentencePiece model.
    """

    def __init__(self, spm_path: str | os.PathLike[str] | None = None) -> None:
        path = packaged_spm_path() if spm_path is None else Path(spm_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"SentencePiece model not found: {path}. Pass the official beit3.spm, or None for the "
                "packaged one."
            )
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{path} is not a SentencePiece model: {e}") from e
        self.spm_path = path
        self.mask_id = self._sp.get_piece_size() + _FAIRSEQ_OFFSET
        # Piece ids whose fairseq id is not piece + 1: the control pieces of the SentencePiece model.
        self._special = {self._sp.unk_id(): UNK_ID, self._sp.bos_id(): BOS_ID, self._sp.eos_id(): EOS_ID}
        self._special.pop(-1, None)

    def piece_to_id(self, piece: int) -> int:
        """The fairseq id of SentencePiece piece id ``piece``."""
        return self._special.get(piece, piece + _FAIRSEQ_OFFSET)

    def encode(self, text: str, *, add_bos_eos: bool = False) -> list[int]:
        """Token ids of ``text``; ``add_bos_eos`` wraps them in ``<s>`` ... ``</s>`` as BEiT-3 inputs are."""
        ids = [self.piece_to_id(p) for p in self._sp.encode(text)]
        return [BOS_ID, *ids, EOS_ID] if add_bos_eos else ids

    def decode(self, ids: list[int]) -> str:
        """Text of token ids, skipping ``<s>``, ``<pad>``, ``</s>``, ``<mask>`` and ``<WLS>``."""
        inverse = {v: k for k, v in self._special.items()}
        pieces = [
            inverse.get(i, i - _FAIRSEQ_OFFSET)
            for i in ids
            if i not in (BOS_ID, PAD_ID, EOS_ID) and _FAIRSEQ_OFFSET <= i < self.mask_id
        ]
        return self._sp.decode(pieces)
