"""BEiT-3 tokenizer: XLM-R id mapping over the packaged SentencePiece model."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm

from omtseg.modeling.tokenizer import (
    BOS_ID,
    EOS_ID,
    MASK_ID,
    UNK_ID,
    WLS_ID,
    Beit3Tokenizer,
    packaged_spm_path,
)

SHARED_SPM = Path(__file__).resolve().parents[3] / "shared" / "data" / "tokenizer" / "beit3.spm"


@pytest.fixture(scope="module")
def tokenizer() -> Beit3Tokenizer:
    return Beit3Tokenizer()


def test_literal_ids(tokenizer: Beit3Tokenizer) -> None:
    # Checked by hand against the pieces: ▁a=9, ▁photo=1126, ▁of=8, ▁cat=2527, ;=167 (piece k -> id k+1).
    assert tokenizer.encode("a photo of a cat") == [10, 1127, 9, 10, 2528]
    assert tokenizer.encode("a photo of a cat", add_bos_eos=True) == [0, 10, 1127, 9, 10, 2528, 2]
    assert tokenizer.encode("cat;") == [2528, 168]


TEXTS = ["wall", "potted plant", "tv, monitor", "Kühlschrank", "a  b\tc", "", "漢字 ✗"]


@pytest.mark.parametrize("text", TEXTS)
def test_ids_follow_the_documented_mapping(tokenizer: Beit3Tokenizer, text: str) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(packaged_spm_path()))
    special = {0: 3, 1: 0, 2: 2}  # <unk>, <s>, </s> piece ids -> fairseq ids
    expected = [special.get(p, p + 1) for p in sp.encode(text)]
    assert tokenizer.encode(text) == expected
    assert all(0 <= i < MASK_ID for i in expected)


def test_special_ids(tokenizer: Beit3Tokenizer) -> None:
    assert (BOS_ID, EOS_ID, UNK_ID) == (0, 2, 3)
    assert tokenizer.mask_id == MASK_ID == 64001
    assert WLS_ID == MASK_ID + 1 < 64010  # a row of the official text table
    assert [tokenizer.piece_to_id(p) for p in (0, 1, 2, 3)] == [UNK_ID, BOS_ID, EOS_ID, 4]
    assert UNK_ID in tokenizer.encode("✗")  # a symbol the model has no piece for


def test_decode_round_trips(tokenizer: Beit3Tokenizer) -> None:
    ids = tokenizer.encode("a photo of a cat", add_bos_eos=True)
    assert tokenizer.decode([*ids, WLS_ID, 1]) == "a photo of a cat"


def test_other_path_and_missing_file(tmp_path: Path) -> None:
    if SHARED_SPM.is_file():
        assert Beit3Tokenizer(SHARED_SPM).encode("wall") == Beit3Tokenizer().encode("wall")
    with pytest.raises(FileNotFoundError, match="nope.spm"):
        Beit3Tokenizer(tmp_path / "nope.spm")
    (tmp_path / "bad.spm").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.spm"):
        Beit3Tokenizer(tmp_path / "bad.spm")
