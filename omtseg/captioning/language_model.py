"""The language model a segment captioner writes with: loaded from a local directory, never from a hub.

Any Hugging Face causal LM saved with ``save_pretrained`` works (GPT-2 in SCA). :func:`make_word_level_lm`
writes a tiny random one over a closed word list, for tests and the demo, where no hub is reachable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def load_language_model(path: str | os.PathLike[str]) -> tuple[Any, Any]:
    """A causal LM and its tokenizer from a local ``save_pretrained`` directory (never the hub).

    Raises:
        FileNotFoundError: ``path`` is not a directory with a ``config.json``.
        ValueError: the tokenizer has no end-of-text token (captions could not stop).
    """
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
    )  # imported late: seconds, only captioning pays

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"No language model at {path}: expected a Hugging Face model directory with config.json "
            "(e.g. gpt2 saved with save_pretrained); download it once and point language_model at it."
        )
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"The tokenizer in {path} has no eos_token; set one (GPT-2's is <|endoftext|>).")
    return model, tokenizer


def make_word_level_lm(
    path: str | os.PathLike[str],
    words: list[str],
    *,
    num_layers: int = 2,
    width: int = 64,
    num_heads: int = 2,
    max_positions: int = 64,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised GPT-2 with a whitespace word-level tokenizer over ``words``.

    Captioning needs a language model, and no hub is reachable in tests and demos: a tiny LM over a closed
    vocabulary (the synthetic captions' words) trains in seconds and is loaded like any real checkpoint.
    Token 0 is ``<|endoftext|>`` (GPT-2's end token), 1 is ``<unk>``.

    Args:
        path: directory to write (created).
        words: the vocabulary; duplicates are dropped, order kept.
        num_layers: GPT-2 blocks.
        width: embedding width D.
        num_heads: attention heads.
        max_positions: longest prefix + caption in tokens.
        seed: weight initialisation seed.

    Returns:
        ``path``, ready for :func:`load_language_model`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<unk>"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + [w for w in words if w not in specials]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=specials[0], unk_token=specials[1])
    config = GPT2Config(
        n_layer=num_layers,
        n_embd=width,
        n_head=num_heads,
        n_positions=max_positions,
        vocab_size=len(vocab),
        bos_token_id=0,
        eos_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    path = Path(path)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path
