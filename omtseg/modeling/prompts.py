"""Class prompts: a vocabulary becomes ``<s><WLS>name;<WLS>name;...</s>`` text with a learnable ``<WLS>``.

Every synonym of every class is one *prompt entry*: the ``<WLS>`` token followed by the name and ``;``.
BEiT-3 reads the entries jointly with the image; the output state at each ``<WLS>`` is that entry's class
feature, and the head scores queries against it (synonyms of one class are reduced by the segmenter).
``<WLS>`` (id 64002) is a new token: its input embedding is one learnable vector [D] held here, substituted
wherever the id occurs, while BEiT-3's 64010-row text table stays frozen. It starts from the row of ``<s>``
(id 0) after the pretrained weights are loaded (:meth:`PromptEncoder.init_from`): ``<s>`` is the token whose
output BEiT-3 was trained to make a summary of the text (the retrieval heads read it), the role ``<WLS>``
plays for each entry.

Chunks (cost). BEiT-3 has 1022 text positions and joint attention costs O((Nv + L)^2 D) per block for Nv
image tokens and L text tokens. Measured with the packaged vocabularies (entries = all synonyms, tokens):
COCO panoptic 133 classes / 188 entries / 611 tokens, ADE20K-150 225 / 740, Pascal Context-59 160 / 509,
Pascal Context-459 559 / 1857, ADE20K-847 1341 / 4720, Pascal VOC-20 79 / 258 (about 3.3 tokens per entry).
The entries are therefore packed, whole and in order, into chunks of at most ``max_text_tokens`` tokens
(default 1022, the whole position table) whose positions restart at 0. The segmenter runs one backbone pass
per chunk with the image, concatenates the ``<WLS>`` features and averages the image features over the chunks.
Cost is linear in the number of chunks C (about tokens / (max_text_tokens - 2)): C passes of
O((Nv + max_text_tokens)^2 D) attention and O((Nv + max_text_tokens) D^2) projections per block; memory is
bounded by one chunk. At the default, COCO (the training vocabulary), ADE20K-150 and Context-59 are one joint
pass, as in the paper, and ADE20K-847 takes five; a smaller value (e.g. 256: COCO 3 passes, ADE20K-847 19)
bounds memory further at the cost of more passes. Small vocabularies are always one chunk.

Text attention (``text_attention`` of the segmenter). ``"sequential"`` is the layout above, the paper's: every
token attends to every other, so a name's ``<WLS>`` feature depends on the names around it and on its
position. ``"per_name"``: every entry ``<WLS> name ;`` has its own positions ``0..`` (each name starts at the
same position), its tokens attend to the image and to their own entry only (block-diagonal text attention,
:func:`prompt_attention_mask`), and the image attends to all names; a name's feature then depends on no other
name nor on the order, and any vocabulary runs in one pass. ``"one_way"``: as ``per_name`` but the image
attends to itself only, so image features do not depend on the vocabulary at all.

Training vocabularies are sampled and shuffled per batch by :func:`sample_vocabulary`, so that no class owns
a fixed text position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omtseg.modeling.backbone.entry_attention import entry_mask
from omtseg.modeling.tokenizer import BOS_ID, EOS_ID, WLS_ID, Beit3Tokenizer
from omtseg.types import Targets, Vocabulary

MAX_TEXT_TOKENS = 1022
"""BEiT-3's text position table has 1024 rows, the first two reserved by the fairseq offset."""

ENTRY_SEPARATOR = ";"


@dataclass
class PromptChunk:
    """One backbone pass worth of prompt text.

    Attributes:
        text_ids: (L,) long token ids ``<s> <WLS> name ; <WLS> name ; ... </s>``.
        text_positions: (L,) long positions ``0..L-1`` (before the fairseq offset).
        wls_index: (P,) long index in ``text_ids`` of each entry's ``<WLS>`` token.
        prompt_class: (P,) long class index (into the vocabulary) of each entry.
        entry: (L,) long entry (0..P-1) each token belongs to, -1 for ``<s>``/``</s>``.
    """

    text_ids: Tensor
    text_positions: Tensor
    wls_index: Tensor
    prompt_class: Tensor
    entry: Tensor

    def to(self, device: torch.device | str) -> PromptChunk:
        """The same chunk with every tensor on ``device``."""
        return PromptChunk(
            text_ids=self.text_ids.to(device),
            text_positions=self.text_positions.to(device),
            wls_index=self.wls_index.to(device),
            prompt_class=self.prompt_class.to(device),
            entry=self.entry.to(device),
        )


class PromptEncoder(nn.Module):
    """Tokenizes vocabularies into prompt chunks and holds the learnable ``<WLS>`` input embedding.

    Args:
        tokenizer: the BEiT-3 tokenizer; None builds one on the packaged ``beit3.spm``.
        embed_dim: BEiT-3 width D.
        max_text_tokens: most tokens per chunk (``<s>``/``</s>`` included), at most 1022.
        learnable: False freezes ``<WLS>`` at its initial value (the "no prompt tuning" ablation).
        init_token_id: the text-table row :meth:`init_from` copies (``<s>`` by default, see module doc).
    """

    def __init__(
        self,
        *,
        tokenizer: Beit3Tokenizer | None = None,
        embed_dim: int,
        max_text_tokens: int = MAX_TEXT_TOKENS,
        learnable: bool = True,
        init_token_id: int = BOS_ID,
    ) -> None:
        super().__init__()
        if not 8 <= max_text_tokens <= MAX_TEXT_TOKENS:
            raise ValueError(
                f"max_text_tokens={max_text_tokens} must lie in [8, {MAX_TEXT_TOKENS}] (BEiT-3 positions)."
            )
        self.tokenizer = tokenizer if tokenizer is not None else Beit3Tokenizer()
        self.max_text_tokens = max_text_tokens
        self.init_token_id = init_token_id
        # Same scale as torchscale's text-table init; replaced by init_from once pretrained weights exist.
        self.wls = nn.Parameter(torch.randn(embed_dim) * embed_dim**-0.5, requires_grad=learnable)
        self._entry_cache: dict[str, tuple[int, ...]] = {}

    @torch.no_grad()
    def init_from(self, text_embedding: nn.Embedding) -> None:
        """Copy row ``init_token_id`` of the (pretrained) text table into the ``<WLS>`` vector."""
        if text_embedding.embedding_dim != self.wls.shape[0]:
            raise ValueError(
                f"Text table width {text_embedding.embedding_dim} differs from the prompt width "
                f"{self.wls.shape[0]}; build PromptEncoder with the backbone's embed_dim."
            )
        self.wls.copy_(text_embedding.weight[self.init_token_id])

    def entry_ids(self, name: str) -> tuple[int, ...]:
        """Token ids of one prompt entry: ``<WLS>`` then ``name;`` (cached per name)."""
        ids = self._entry_cache.get(name)
        if ids is None:
            ids = (WLS_ID, *self.tokenizer.encode(name + ENTRY_SEPARATOR))
            self._entry_cache[name] = ids
        return ids

    def tokenize(self, vocabulary: Vocabulary, per_name: bool = False) -> list[PromptChunk]:
        """Prompt chunks covering every synonym of every class of ``vocabulary``, in class order.

        With ``per_name`` there is one chunk, without ``<s>``/``</s>``, whose entries each have positions
        ``0..len - 1`` (the per-name layouts of the module docstring).

        Raises:
            ValueError: one name alone does not fit in a chunk.
        """
        if per_name:
            return [self._tokenize_per_name(vocabulary)]
        budget = self.max_text_tokens - 2  # <s> and </s> of each chunk
        chunks: list[PromptChunk] = []
        ids: list[int] = []
        wls: list[int] = []
        classes: list[int] = []

        def close() -> None:
            text = [BOS_ID, *ids, EOS_ID]
            starts = torch.zeros(len(text), dtype=torch.long)
            starts[torch.tensor(wls, dtype=torch.long)] = 1
            entry = starts.cumsum(0) - 1  # (L,) entry of each token; <s> gets -1
            entry[-1] = -1
            chunks.append(
                PromptChunk(
                    text_ids=torch.tensor(text, dtype=torch.long),
                    text_positions=torch.arange(len(text)),
                    wls_index=torch.tensor(wls, dtype=torch.long),
                    prompt_class=torch.tensor(classes, dtype=torch.long),
                    entry=entry,
                )
            )

        for k, names in enumerate(vocabulary.synonyms):
            for name in names:
                entry = self.entry_ids(name)
                if len(entry) > budget:
                    raise ValueError(
                        f"Class name {name!r} spells to {len(entry)} tokens, more than a chunk holds "
                        f"({budget}); shorten it or raise max_text_tokens."
                    )
                if len(ids) + len(entry) > budget:
                    close()
                    ids, wls, classes = [], [], []
                wls.append(1 + len(ids))  # +1 for the chunk's <s>
                classes.append(k)
                ids.extend(entry)
        close()
        return chunks

    def _tokenize_per_name(self, vocabulary: Vocabulary) -> PromptChunk:
        ids: list[int] = []
        positions: list[int] = []
        entry: list[int] = []
        wls: list[int] = []
        classes: list[int] = []
        for k, names in enumerate(vocabulary.synonyms):
            for name in names:
                tokens = self.entry_ids(name)
                if len(tokens) > self.max_text_tokens:
                    raise ValueError(
                        f"Class name {name!r} spells to {len(tokens)} tokens, more than the "
                        f"{self.max_text_tokens} text positions; shorten it."
                    )
                wls.append(len(ids))
                entry.extend([len(classes)] * len(tokens))
                classes.append(k)
                positions.extend(range(len(tokens)))
                ids.extend(tokens)
        return PromptChunk(
            text_ids=torch.tensor(ids, dtype=torch.long),
            text_positions=torch.tensor(positions, dtype=torch.long),
            wls_index=torch.tensor(wls, dtype=torch.long),
            prompt_class=torch.tensor(classes, dtype=torch.long),
            entry=torch.tensor(entry, dtype=torch.long),
        )

    def embed_text(self, text_embedding: nn.Embedding, text_ids: Tensor) -> Tensor:
        """Input embeddings (..., L, D) of ``text_ids`` (..., L) with the learnable vector at every ``<WLS>``.

        The table lookup uses ``text_embedding``'s (frozen) weights; only ``self.wls`` receives gradient at
        ``<WLS>`` positions, whatever the table's row 64002 holds.
        """
        embeds = F.embedding(text_ids, text_embedding.weight)  # (..., L, D)
        return torch.where((text_ids == WLS_ID)[..., None], self.wls.to(embeds.dtype), embeds)


def prompt_attention_mask(vision_len: int, entry: Tensor, *, image_attends_text: bool) -> Tensor:
    """(1, N, N) bool, N = ``vision_len`` + L: who may attend to whom in the per-name layouts.

    Vision tokens attend to each other (and to every text token when ``image_attends_text``); a text token
    attends to the vision tokens and to the tokens of its own entry (``entry``: (L,) entry index per token).
    The segmenter passes the same pattern as an :class:`~omtseg.modeling.backbone.entry_attention.EntryLayout`
    (cost linear in L, no N x N mask); this dense form is the reference and what ONNX tracing records.
    """
    return entry_mask(vision_len, entry, image_attends_text=image_attends_text)


def sample_vocabulary(
    vocabulary: Vocabulary,
    present: set[int],
    num_classes: int | None,
    generator: torch.Generator | None = None,
) -> tuple[Vocabulary, Tensor]:
    """A shuffled training vocabulary that keeps every present class.

    Args:
        vocabulary: the dataset's K classes.
        present: indices of the classes in the batch's targets (always kept).
        num_classes: size of the sampled vocabulary (None keeps all K); when fewer than ``len(present)``,
            all present classes are kept anyway.
        generator: random source for the choice of absent classes and the order.

    Returns:
        sub_vocab: the kept classes in random order.
        index_map: (K,) long, new index of each old class, -1 for dropped ones; remap targets with
            ``index_map[labels]``.
    """
    k = len(vocabulary)
    if any(not 0 <= c < k for c in present):
        raise ValueError(f"present classes {sorted(present)} must be indices in [0, {k}).")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be at least 1 (or None for all classes).")
    target = k if num_classes is None else min(max(num_classes, len(present)), k)
    absent = [c for c in range(k) if c not in present]
    order = torch.randperm(len(absent), generator=generator)[: target - len(present)].tolist()
    kept = torch.tensor(sorted(present) + [absent[i] for i in order], dtype=torch.long)
    kept = kept[torch.randperm(len(kept), generator=generator)]
    index_map = torch.full((k,), -1, dtype=torch.long)
    index_map[kept] = torch.arange(len(kept))
    return vocabulary.subset(kept.tolist()), index_map


def remap_targets(targets: Sequence[Targets], index_map: Tensor) -> list[Targets]:
    """Targets with labels re-indexed into a sampled vocabulary (see :func:`sample_vocabulary`).

    Args:
        targets: per image, labels indexing the dataset vocabulary.
        index_map: (K,) long, new index of each old class, -1 for classes left out.

    Returns:
        The same targets, ``labels``/``crowd_labels`` indexing the sampled vocabulary. Crowd segments of
        classes left out become ``void`` (still ignored, but no longer needing a class).

    Raises:
        ValueError: a non-crowd segment's class was left out (every present class must be sampled).
    """
    out = []
    index_map = index_map.cpu()
    for t in targets:
        labels = index_map[t.labels.cpu()]
        if (labels < 0).any():
            raise ValueError("A target class is missing from the sampled vocabulary; keep every present one.")
        crowd = index_map[t.crowd_labels.cpu()]
        keep = crowd >= 0
        out.append(
            replace(
                t,
                labels=labels.to(t.labels.device),
                crowd_labels=crowd[keep].to(t.crowd_labels.device),
                crowd_masks=t.crowd_masks[keep.to(t.crowd_masks.device)],
                void=t.void | t.crowd_masks[~keep.to(t.crowd_masks.device)].any(0),
            )
        )
    return out


def prompt_vocabulary(
    vocabulary: Vocabulary,
    targets: Sequence[Targets],
    *,
    num_classes: int | None,
    shuffle: bool,
    generator: torch.Generator | None = None,
) -> tuple[Vocabulary, list[Targets]]:
    """The vocabulary a training batch is prompted with, and its targets re-indexed into it.

    Args:
        vocabulary: the dataset's K classes.
        targets: the batch's targets, labels indexing ``vocabulary``.
        num_classes: classes to prompt with (every present one plus random negatives); None prompts with
            all K.
        shuffle: shuffle the class order, so no class owns a text position and the model must read the
            names. False keeps the dataset order (randomly initialised trunks, where the position of the
            entry is what identifies the class).
        generator: random source (as :func:`sample_vocabulary`).

    Returns:
        The prompted vocabulary and the remapped targets (see :func:`remap_targets`).
    """
    present = {int(c) for t in targets for c in t.labels.tolist()}
    sampled, index_map = sample_vocabulary(vocabulary, present, num_classes, generator)
    if not shuffle:
        kept = (index_map >= 0).nonzero()[:, 0]  # the sampled classes, in dataset order
        sampled = vocabulary.subset(kept.tolist())
        index_map = torch.full_like(index_map, -1)
        index_map[kept] = torch.arange(len(kept))
    return sampled, remap_targets(targets, index_map)
