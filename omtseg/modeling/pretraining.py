"""BEiT-3's pre-training objective, scaled down: masked data modeling through the multiway transformer.

BEiT-3 is pre-trained with one task, mask-then-predict, on images, texts and image-text pairs through the
shared multiway encoder (attention over all tokens, vision expert A, text expert B). Here, on image-text
pairs, two passes per step:

* **Masked language modeling given the image**: a share of the caption tokens (BEiT-3: 50% for image-text
  pairs) is replaced by ``<mask>`` and predicted from the rest of the caption *and the image* through the
  joint attention, by ``mlm_head`` (D -> the 64010-row text vocabulary). To fill ``a [MASK] star`` the model
  must find the star in the image: this is what ties words to appearance.
* **Masked image modeling given the caption**: a share of the patches (BEiT-3: 40%) is replaced by the mask
  token and reconstructed by ``mim_head``. BEiT-3 predicts the masked patches' ids from a VQ visual tokenizer
  (BEiT v2's); that tokenizer is a separately trained network we do not have, so the target here is the
  patch's appearance itself, a ``g x g`` RGB thumbnail (mean of each cell, in the model's normalised pixel
  units) regressed with a mean squared error, as SimMIM and MAE do. At the demo's 4 x 4 patch grid BEiT's
  block-wise masking degenerates to single patches, so patches are masked uniformly at random.
* **Image-text contrast** (optional, not BEiT-3's: VLMo's, the multiway transformer's first pre-training,
  ``itc_weight`` of the LightningModule): image and caption each encoded alone, each image pulled towards
  its own caption and away from the batch's others (:func:`image_text_contrastive`). On the open-vocabulary
  world masked modeling alone leaves a novel word's text state on a seen neighbour ("orange" on "yellow");
  README "Limits" has what the contrast changes.
* **Image-text matching** (optional, VLMo's too, ``itm_weight``): one joint pass decides whether a caption
  describes an image, against hard negatives drawn by the contrastive similarities
  (:func:`image_text_matching`). It is read as the segmenter reads class names (the caption attends to the
  image, the image not to the caption), from the mean of the word states, so a word's state learns to say
  whether the image shows it: the check a class name needs to win a query over a seen neighbour.
* **Word-swap hard negatives** (optional, NegCLIP's, ``swap_groups``): a copy of each caption with one word
  swapped for another of its kind that the image does not show ("a red ball" -> "a red cross"), one more
  caption column of the contrast and one more pair of the matching (:func:`swap_words`). Negatives drawn
  from other images almost always differ in colour or ground, so neither loss otherwise needs the shapes.

Cost: a softmax over all 64010 text ids is 90% of a tiny model's step on a CPU, while a small corpus uses a
few dozen ids. :meth:`BEiT3Pretrainer.restrict_output` limits the masked-language softmax to the ids that
occur in the corpus (a sampled softmax with a fixed candidate set); the head's other rows stay untrained,
which no caption of that corpus can notice.

Shape letters: B batch, L text tokens, N patches, D width, V text vocabulary, M masked tokens.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omtseg.modeling.backbone.beit3 import BEiT3
from omtseg.modeling.tokenizer import BOS_ID, EOS_ID, MASK_ID, PAD_ID


def _choose(candidates: Tensor, ratio: float, generator: torch.Generator | None) -> Tensor:
    """(B, T) bool: per row, ``max(1, round(ratio * n))`` of the row's ``n`` candidates at random."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio {ratio} must lie in (0, 1).")
    scores = torch.rand(candidates.shape, generator=generator).to(candidates.device)
    scores = scores.masked_fill(~candidates, 2.0)  # non-candidates sort last
    count = (candidates.sum(1, keepdim=True) * ratio).round().clamp(min=1)  # (B, 1)
    rank = scores.argsort(1).argsort(1)  # rank of each position within its row
    return (rank < count) & candidates


def word_positions(text_ids: Tensor, padding_mask: Tensor) -> Tensor:
    """(B, L) bool: the caption's word tokens, i.e. neither ``<s>``, ``</s>`` nor padding."""
    return ~padding_mask & (text_ids != BOS_ID) & (text_ids != EOS_ID)


def mask_text(
    text_ids: Tensor, padding_mask: Tensor, ratio: float, generator: torch.Generator | None = None
) -> Tensor:
    """Positions to mask in (B, L) captions: a ``ratio`` share of each row's word tokens (at least one).

    ``<s>``, ``</s>`` and padding are never masked.
    """
    candidates = word_positions(text_ids, padding_mask)
    if not bool(candidates.any(1).all()):
        raise ValueError("Every caption needs at least one token besides <s> and </s> to mask.")
    return _choose(candidates, ratio, generator)


def corrupt_text(
    text_ids: Tensor,
    text_mask: Tensor,
    *,
    keep: float = 0.0,
    replace: float = 0.0,
    replacement_ids: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The input of masked language modeling: chosen tokens become ``<mask>``, or stay, or turn random.

    BERT's recipe is ``keep=0.1, replace=0.1`` (80% ``<mask>``); all three kinds are predicted, so the
    output at a token that *looks* intact must still name the right word: the final states of visible words
    then carry their identity, which the segmenter reads at the class names. ``keep=replace=0`` masks all.

    Args:
        text_ids: (B, L) ids.
        text_mask: (B, L) bool, the tokens to predict.
        keep: share of them left unchanged.
        replace: share replaced by a random id of ``replacement_ids``.
        replacement_ids: (V',) ids to draw replacements from (e.g. the corpus's words).
    """
    if keep < 0 or replace < 0 or keep + replace > 1:
        raise ValueError(f"keep={keep} and replace={replace} must be shares summing to at most 1.")
    draw = torch.rand(text_ids.shape, generator=generator).to(text_ids.device)
    out = text_ids.masked_fill(text_mask & (draw >= keep + replace), MASK_ID)
    if replace > 0:
        if replacement_ids is None or replacement_ids.numel() == 0:
            raise ValueError("replace > 0 needs replacement_ids to draw random words from.")
        pick = torch.randint(replacement_ids.numel(), text_ids.shape, generator=generator)
        random_ids = replacement_ids.cpu()[pick].to(text_ids.device)
        swap = text_mask & (draw >= keep) & (draw < keep + replace)
        out = torch.where(swap, random_ids, out)
    return out


def mean_word_state(states: Tensor, text_ids: Tensor, padding_mask: Tensor) -> Tensor:
    """(B, D) mean of (B, L, D) text ``states`` over each caption's word tokens (:func:`word_positions`)."""
    words = word_positions(text_ids, padding_mask).unsqueeze(-1).to(states.dtype)
    return (states * words).sum(1) / words.sum(1).clamp(min=1)


def image_embedding(beit3: BEiT3, images: Tensor) -> Tensor:
    """(B, D) float32 L2-normalised embedding of the image alone: the mean of its patch states (vision
    expert, CLS left out)."""
    return F.normalize(beit3(image=images)[:, 1:].mean(1).float(), dim=-1)


def text_embedding(beit3: BEiT3, text_ids: Tensor, padding_mask: Tensor) -> Tensor:
    """(B, D) float32 L2-normalised embedding of the caption alone: the mean of its word states (text
    expert; ``<s>``, ``</s>``, padding left out)."""
    states = beit3(text_ids=text_ids, text_padding_mask=padding_mask)
    return F.normalize(mean_word_state(states, text_ids, padding_mask).float(), dim=-1)


def unimodal_embeddings(
    beit3: BEiT3, images: Tensor, text_ids: Tensor, padding_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """The contrast's two embeddings: :func:`image_embedding` and :func:`text_embedding`."""
    return image_embedding(beit3, images), text_embedding(beit3, text_ids, padding_mask)


def contrastive_loss(
    image: Tensor, text: Tensor, temperature: float = 0.07, negatives: Tensor | None = None
) -> Tensor:
    """Symmetric cross-entropy of the (B, B) cosine similarities of normalised embeddings over
    ``temperature``: each image nearest its own caption within the batch, and each caption its image.

    ``negatives``: (K, D) normalised embeddings of K extra captions (NegCLIP's hard negatives, each made from
    one image's caption): more caption columns for the image-to-text side, which every image must rank below
    its own caption; the text-to-image side is unchanged.
    """
    logits = image @ text.T / temperature
    target = torch.arange(len(logits), device=logits.device)
    to_text = logits
    if negatives is not None:
        to_text = torch.cat([logits, image @ negatives.T / temperature], 1)
    return (F.cross_entropy(to_text, target) + F.cross_entropy(logits.T, target)) / 2


def image_text_contrastive(
    beit3: BEiT3, images: Tensor, text_ids: Tensor, padding_mask: Tensor, temperature: float = 0.07
) -> Tensor:
    """VLMo's image-text contrastive loss through the multiway encoder's two unimodal passes.

    The image alone (vision expert) and the caption alone (text expert) are encoded
    (:func:`unimodal_embeddings`) and :func:`contrastive_loss` makes each image nearest its own caption
    within the batch. A caption naming an orange thing must then sit nearest an image of one, so words are
    placed by what they look like, which is where a segmentation head trained on other names can find a
    new one.

    Args:
        beit3: the encoder.
        images: (B, 3, H, W) normalised images.
        text_ids: (B, L) caption ids ``<s> ... </s>`` padded with ``<pad>``.
        padding_mask: (B, L) bool, True at padding.
        temperature: CLIP's initial 0.07, kept fixed.
    """
    return contrastive_loss(*unimodal_embeddings(beit3, images, text_ids, padding_mask), temperature)


def hard_negatives(
    similarity: Tensor | None, text_ids: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """VLMo's (ALBEF's) hard negatives for image-text matching: per image a caption, per caption an image,
    drawn from the batch's others with probability ``softmax(similarity)`` (uniformly without one), never
    a pair whose caption equals the positive's (two images may share a caption).

    Args:
        similarity: (B, B) image-to-caption similarities (contrastive logits), or None.
        text_ids: (B, L) the captions, compared for equality.
        generator: the sampling's random generator.

    Returns:
        ``(caption_of_image, image_of_caption)``, (B,) long indices; -1 where no other caption differs.
    """
    n = len(text_ids)
    same = (text_ids[:, None, :] == text_ids[None, :, :]).all(-1).cpu()  # (B, B), diagonal included
    scores = torch.zeros(n, n) if similarity is None else similarity.detach().float().cpu()
    picks = []
    for s in (scores, scores.T):
        weights = s.softmax(-1).masked_fill(same, 0.0) + (~same) * 1e-6  # never 0 for a valid caption
        valid = (~same).any(1)
        pick = torch.full((n,), -1, dtype=torch.long)
        if bool(valid.any()):
            pick[valid] = torch.multinomial(weights[valid], 1, generator=generator)[:, 0]
        picks.append(pick.to(text_ids.device))
    return picks[0], picks[1]


def image_text_matching(
    beit3: BEiT3,
    head: nn.Module,
    images: Tensor,
    text_ids: Tensor,
    padding_mask: Tensor,
    similarity: Tensor | None = None,
    generator: torch.Generator | None = None,
    swapped: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, int]:
    """VLMo's image-text matching: does this caption describe this image? One joint pass over the batch's
    pairs, each image with a hard-negative caption and each caption with a hard-negative image
    (:func:`hard_negatives`), read *as the segmenter reads class names*: the caption attends to the image
    and itself, the image to itself only (``text_attention: one_way``), and the verdict is ``head`` on the
    mean of the caption's word states, so every word's state must carry whether it is seen in the image.

    ``swapped``: ``(ids, padding, valid)`` of word-swapped captions (:func:`swap_words`), (B, L'), (B, L')
    and (B,) bool; each valid one is one more negative of its own image.

    Returns:
        The 2-way cross-entropy (match / not), the correct verdicts (0-d long) and the pairs judged.
    """
    neg_text, neg_image = hard_negatives(similarity, text_ids, generator)
    has_text, has_image = neg_text >= 0, neg_image >= 0
    texts = [text_ids, text_ids[neg_text[has_text]], text_ids[has_image]]
    paddings = [padding_mask, padding_mask[neg_text[has_text]], padding_mask[has_image]]
    pair_images = [images, images[has_text], images[neg_image[has_image]]]
    num_negatives = int(has_text.sum()) + int(has_image.sum())
    if swapped is not None:
        swap_ids, swap_padding, valid = swapped
        texts, paddings = _pad_to_common(texts + [swap_ids[valid]], paddings + [swap_padding[valid]])
        pair_images.append(images[valid])
        num_negatives += int(valid.sum())
    pair_text, pair_padding = torch.cat(texts), torch.cat(paddings)
    labels = torch.cat([torch.ones(len(images)), torch.zeros(num_negatives)]).long().to(images.device)
    gh, gw = beit3.patch_grid((images.shape[-2], images.shape[-1]))
    vision_len = 1 + gh * gw
    total = vision_len + pair_text.shape[1]
    allowed = torch.ones(1, total, total, dtype=torch.bool, device=images.device)
    allowed[:, :vision_len, vision_len:] = False  # the image does not read the caption
    states = beit3(
        image=torch.cat(pair_images), text_ids=pair_text, text_padding_mask=pair_padding, attn_mask=allowed
    )
    logits = head(mean_word_state(states[:, vision_len:], pair_text, pair_padding)).float()
    return F.cross_entropy(logits, labels), (logits.argmax(-1) == labels).sum(), len(labels)


def _pad_to_common(ids: list[Tensor], padding: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Caption id / padding tensors right-padded (``<pad>``, True) to their longest length."""
    length = max(t.shape[1] for t in ids)
    return (
        [F.pad(t, (0, length - t.shape[1]), value=PAD_ID) for t in ids],
        [F.pad(p, (0, length - p.shape[1]), value=True) for p in padding],
    )


def swap_words(
    caption: str, groups: list[list[str]], context: str, rng: random.Random
) -> str | None:
    """A hard negative caption (NegCLIP's word swaps): one phrase of ``caption`` replaced by another of its
    group that ``context`` (every caption of the image) never mentions, so the result names something the
    image does not show; None when no phrase of the caption has such a replacement.

    Each group holds interchangeable phrases (colours, shapes, kinds of ground); a phrase matches whole words
    only. ``rng`` draws the phrase occurrence and its replacement.
    """
    options = []
    for group in groups:
        absent = [q for q in group if not re.search(rf"\b{re.escape(q)}\b", context)]
        if not absent:
            continue
        for phrase in group:
            for m in re.finditer(rf"\b{re.escape(phrase)}\b", caption):
                options.append((m.start(), m.end(), absent))
    if not options:
        return None
    start, end, absent = options[rng.randrange(len(options))]
    return caption[:start] + absent[rng.randrange(len(absent))] + caption[end:]


def mask_patches(
    batch: int, num_patches: int, ratio: float, generator: torch.Generator | None = None
) -> Tensor:
    """(B, N) bool: ``round(ratio * N)`` patches per image (at least one), uniformly at random."""
    return _choose(torch.ones(batch, num_patches, dtype=torch.bool), ratio, generator)


def patch_thumbnails(images: Tensor, patch_size: int, grid: int) -> Tensor:
    """(B, N, 3 * grid^2) reconstruction targets: each patch averaged down to ``grid x grid`` RGB cells.

    Args:
        images: (B, 3, H, W) normalised images, H and W multiples of ``patch_size``.
    """
    if patch_size % grid:
        raise ValueError(f"target grid {grid} must divide the patch size {patch_size}.")
    b, c, h, w = images.shape
    gh, gw = h // patch_size, w // patch_size
    small = F.avg_pool2d(images, patch_size // grid)  # (B, 3, gh*grid, gw*grid)
    small = small.view(b, c, gh, grid, gw, grid).permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, 3, grid, grid)
    return small.reshape(b, gh * gw, c * grid * grid)


@dataclass
class PretrainLosses:
    """One step's losses and masked-token statistics.

    Attributes:
        mlm: cross-entropy of the masked caption tokens.
        mim: mean squared error of the masked patches' thumbnails.
        mlm_correct: masked tokens predicted exactly (argmax), a 0-d long tensor.
        mlm_total: masked tokens.
        mlm_targets: (M,) the masked tokens' ids (for baselines).
        itc: image-text contrastive loss (:func:`image_text_contrastive`), None when not asked for.
        itm: image-text matching loss (:func:`image_text_matching`), None when not asked for.
        itm_correct: matching verdicts right (0-d long), None without matching.
        itm_total: pairs judged (0 without matching).
    """

    mlm: Tensor
    mim: Tensor
    mlm_correct: Tensor
    mlm_total: int
    mlm_targets: Tensor
    itc: Tensor | None = None
    itm: Tensor | None = None
    itm_correct: Tensor | None = None
    itm_total: int = 0


class BEiT3Pretrainer(nn.Module):
    """A BEiT-3 encoder with the masked-data-modeling heads.

    Args:
        backbone: the encoder being pre-trained (all of it trains, text table included).
        target_grid: cells per patch side of the masked-image target (see the module docstring).
    """

    def __init__(self, *, backbone: BEiT3, target_grid: int = 4) -> None:
        super().__init__()
        self.beit3 = backbone
        self.target_grid = target_grid
        width = backbone.embed_dim
        self.mlm_head = nn.Linear(width, backbone.text_embed.num_embeddings)
        self.mim_head = nn.Linear(width, 3 * target_grid * target_grid)
        nn.init.normal_(self.mlm_head.weight, std=0.02)
        nn.init.zeros_(self.mlm_head.bias)
        # Candidate ids of the masked-language softmax (None: all); derived from the corpus each run.
        self.output_ids: Tensor | None = None
        self._output_index: Tensor | None = None
        self.itm_head: nn.Linear | None = None

    def enable_matching(self) -> None:
        """Add the image-text matching head (D -> 2, match / not); made last, so a run without matching
        draws the same initial weights as before the head existed."""
        if self.itm_head is None:
            self.itm_head = nn.Linear(self.beit3.embed_dim, 2)
            nn.init.normal_(self.itm_head.weight, std=0.02)
            nn.init.zeros_(self.itm_head.bias)
            self.itm_head.to(self.mlm_head.weight.device)

    def restrict_output(self, ids: Tensor | None) -> None:
        """Limit the masked-language softmax to ``ids`` (1-D long, unique), or lift the limit (None)."""
        if ids is None:
            self.output_ids = self._output_index = None
            return
        vocab = self.mlm_head.out_features
        ids = ids.unique()
        if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"Output ids must be a non-empty set of ids in [0, {vocab}).")
        index = torch.full((vocab,), -1, dtype=torch.long)
        index[ids] = torch.arange(ids.numel())
        self.output_ids, self._output_index = ids.to(self.mlm_head.weight.device), index.to(ids.device)

    def _mlm_logits(self, states: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (M, V or candidates) of masked states (M, D) and targets as indices into them."""
        if self.output_ids is None or self._output_index is None:
            return self.mlm_head(states), targets
        ids = self.output_ids.to(states.device)
        index = self._output_index.to(targets.device)[targets]
        if bool((index < 0).any()):
            raise ValueError(
                "A masked token lies outside the restricted output ids; derive them from this corpus."
            )
        logits = F.linear(states, self.mlm_head.weight[ids], self.mlm_head.bias[ids])
        return logits, index

    def forward(
        self,
        images: Tensor,
        text_ids: Tensor,
        padding_mask: Tensor,
        text_mask: Tensor,
        patch_mask: Tensor,
        input_ids: Tensor | None = None,
        contrastive: bool = False,
        matching: bool = False,
        generator: torch.Generator | None = None,
        negative_temperature: float = 1.0,
        swapped: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> PretrainLosses:
        """Both masked-modeling losses of a batch of image-caption pairs (and the contrastive one).

        Args:
            images: (B, 3, H, W) normalised images.
            text_ids: (B, L) caption ids ``<s> ... </s>`` padded with ``<pad>``.
            padding_mask: (B, L) bool, True at padding.
            text_mask: (B, L) bool caption tokens to mask and predict (pass 1, image intact).
            patch_mask: (B, N) bool patches to mask and reconstruct (pass 2, caption intact).
            input_ids: (B, L) the corrupted captions of pass 1 (:func:`corrupt_text`); None puts
                ``<mask>`` at every position of ``text_mask``.
            contrastive: also compute :func:`image_text_contrastive` (two more, unimodal, passes).
            matching: also compute :func:`image_text_matching` (one joint pass over 3B pairs; hard
                negatives by the contrastive similarities when ``contrastive``, else uniform); needs
                :meth:`enable_matching`.
            generator: random generator of the matching's negatives.
            negative_temperature: the matching's negatives are drawn by softmax(cosine / this): 1.0 (the
                default, the shipped world trunk's) nearly uniformly, as the cosines lie in [-1, 1]; VLMo's
                (ALBEF's) 0.07 hard, mostly captions the contrast confuses with the positive.
            swapped: ``(ids, padding, valid)``, (B, L'), (B, L'), (B,) bool: word-swapped captions
                (:func:`swap_words`), each valid one a further negative of its image, in the contrast (one
                more caption column per image, NegCLIP's) and in the matching (one more pair).
        """
        if negative_temperature <= 0:
            raise ValueError(f"negative_temperature={negative_temperature} must be > 0.")
        if matching and self.itm_head is None:
            raise ValueError("Image-text matching needs its head: call enable_matching() first.")
        num_vision = 1 + patch_mask.shape[1]  # CLS + patches
        masked_ids = text_ids.masked_fill(text_mask, MASK_ID) if input_ids is None else input_ids
        states = self.beit3(image=images, text_ids=masked_ids, text_padding_mask=padding_mask)
        targets = text_ids[text_mask]  # (M,)
        logits, classes = self._mlm_logits(states[:, num_vision:][text_mask], targets)  # (M, V'), (M,)
        mlm = F.cross_entropy(logits.float(), classes)

        states = self.beit3(
            image=images,
            text_ids=text_ids,
            text_padding_mask=padding_mask,
            vision_masked_position=patch_mask,
        )
        pred = self.mim_head(states[:, 1:num_vision][patch_mask])  # (masked patches, 3 g^2)
        target = patch_thumbnails(images, self.beit3.patch_size, self.target_grid)[patch_mask]
        mim = F.mse_loss(pred.float(), target.float())
        itc = itm = itm_correct = None
        itm_total = 0
        similarity = None
        if contrastive:
            image, text = unimodal_embeddings(self.beit3, images, text_ids, padding_mask)
            extra = None
            if swapped is not None and bool(swapped[2].any()):
                swap_ids, swap_padding, valid = swapped
                extra = text_embedding(self.beit3, swap_ids[valid], swap_padding[valid])
            itc = contrastive_loss(image, text, negatives=extra)
            similarity = image @ text.T / negative_temperature
        if matching:
            assert self.itm_head is not None
            itm, itm_correct, itm_total = image_text_matching(
                self.beit3, self.itm_head, images, text_ids, padding_mask, similarity, generator, swapped
            )
        return PretrainLosses(
            mlm=mlm,
            mim=mim,
            mlm_correct=(logits.argmax(-1) == classes).sum(),
            mlm_total=int(targets.numel()),
            mlm_targets=targets.detach(),
            itc=itc,
            itm=itm,
            itm_correct=itm_correct,
            itm_total=itm_total,
        )

    def heads_state_dict(self) -> dict[str, Tensor]:
        """The pre-training heads, keyed as stored beside ``beit3.*`` in the official-format file."""
        heads = ("mlm_head", "mim_head") + (("itm_head",) if self.itm_head is not None else ())
        return {f"{h}.{k}": v for h in heads for k, v in getattr(self, h).state_dict().items()}
