"""The segmenter as one exportable graph, and the text inputs a vocabulary becomes.

:class:`SegmenterGraph` wraps a trained :class:`~omtseg.modeling.segmenter.OMTSeg` so that one forward takes
only tensors: the images and, with the cross-modal joint pass, the tokenised vocabulary
(:func:`graph_text_inputs`), so one exported file serves any vocabulary. With the separate-text ablation
(``cross_modal=False``) the ``<WLS>`` features depend on no image: they are computed once at export for the
export's vocabulary and stored in the graph, which then takes the images alone.

Graph inputs (names of :data:`TEXT_INPUTS`; ``text_entry`` only in the per-name layouts):

    images          (B, 3, H, W) float32, 0-255 (as ``OMTSeg.forward`` takes them; padded inside to 32)
    text_ids        (L,) int64 prompt token ids ``<s><WLS>name;...</s>`` (one prompt chunk)
    text_positions  (L,) int64 text positions
    text_entry      (L,) int64 prompt entry of each token (-1 for ``<s>``/``</s>``)
    wls_index       (P,) int64 position of each entry's ``<WLS>`` in ``text_ids``
    class_members   (P, K) bool, True where entry p names class k (synonyms of one class are reduced by max)

Graph outputs (:data:`OUTPUTS`): class logits (B, Q, K), objectness logits (B, Q), mask logits
(B, Q, H'/4, W'/4) over the padded image H' x W', and the decoder's final query embeddings (B, Q, C).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from omtseg.modeling.prompts import PromptChunk, PromptEncoder
from omtseg.modeling.segmenter import OMTSeg
from omtseg.types import Vocabulary

TEXT_INPUTS = ("text_ids", "text_positions", "text_entry", "wls_index", "class_members")
OUTPUTS = ("class_logits", "objectness_logits", "mask_logits", "queries")

_TOKENIZERS: dict[int, PromptEncoder] = {}


def graph_text_inputs(
    vocabulary: Vocabulary, *, text_attention: str = "sequential", max_text_tokens: int = 1022
) -> dict[str, np.ndarray]:
    """The graph's text inputs for a vocabulary (every synonym of every class, in class order).

    Args:
        vocabulary: the K classes to segment with.
        text_attention: the model's prompt layout (``"sequential"``, ``"per_name"`` or ``"one_way"``; an
            exported file records it in its metadata).
        max_text_tokens: the model's tokens per prompt chunk (recorded likewise).

    Returns:
        ``text_ids``, ``text_positions``, ``text_entry``, ``wls_index`` (int64) and ``class_members``
        (bool (P, K)), as numpy arrays keyed by graph input name.

    Raises:
        ValueError: the vocabulary needs more than one prompt chunk (the graph runs one joint pass); shorten
            it, or export a per-name model, whose prompts are always one chunk.
    """
    prompts = _TOKENIZERS.get(max_text_tokens)
    if prompts is None:  # only the tokenizer of this module is used; its <WLS> vector is never read
        prompts = _TOKENIZERS[max_text_tokens] = PromptEncoder(embed_dim=1, max_text_tokens=max_text_tokens)
    chunks = prompts.tokenize(vocabulary, per_name=text_attention != "sequential")
    if len(chunks) != 1:
        raise ValueError(
            f"The vocabulary of {len(vocabulary)} classes needs {len(chunks)} prompt chunks of at most "
            f"{max_text_tokens} tokens; an exported graph runs one joint pass, so use fewer or shorter names."
        )
    chunk = chunks[0]
    members = np.zeros((chunk.prompt_class.numel(), len(vocabulary)), dtype=bool)
    members[np.arange(members.shape[0]), chunk.prompt_class.numpy()] = True
    return {
        "text_ids": chunk.text_ids.numpy(),
        "text_positions": chunk.text_positions.numpy(),
        "text_entry": chunk.entry.numpy(),
        "wls_index": chunk.wls_index.numpy(),
        "class_members": members,
    }


def reduce_by_membership(class_logits: Tensor, class_members: Tensor) -> Tensor:
    """Per class, the max logit over its prompt entries: (B, Q, P) and (P, K) bool -> (B, Q, K).

    The same values as :func:`~omtseg.modeling.segmenter.reduce_synonyms` (a max is exact), with K read
    from a tensor's shape, so the graph needs no vocabulary size baked in.
    """
    masked = class_logits[..., None].masked_fill(~class_members, float("-inf"))  # (B, Q, P, K)
    return masked.amax(dim=2)


class SegmenterGraph(nn.Module):
    """OMTSeg inference on tensors only (see the module docstring for inputs and outputs).

    Args:
        model: the trained segmenter (put in eval mode; its weights are shared, not copied).
        vocabulary: with ``cross_modal=False``, the vocabulary whose text features are stored in the graph;
            ignored (and may be None) with the joint pass.
    """

    def __init__(self, model: OMTSeg, vocabulary: Vocabulary | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.input_names = ["images"]
        if model.cross_modal:
            self.input_names += [n for n in TEXT_INPUTS if n != "text_entry" or self.per_name]
        else:
            if vocabulary is None:
                raise ValueError(
                    "This model encodes text apart from the image (cross_modal=False): its text features are "
                    "stored in the exported file, so export needs the vocabulary (--classes/--vocabulary)."
                )
            inputs = graph_text_inputs(
                vocabulary, text_attention=model.text_attention, max_text_tokens=model.prompts.max_text_tokens
            )
            with torch.no_grad():
                chunks = model._chunks(vocabulary, torch.device("cpu"))
                self.register_buffer("text_features", model._text_features(vocabulary, chunks).clone())
            self.register_buffer("class_members", torch.from_numpy(inputs["class_members"]))

    @property
    def per_name(self) -> bool:
        return self.model.text_attention != "sequential"

    def forward(self, images: Tensor, *text: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Images (and the text inputs named in ``input_names[1:]``) -> the four outputs."""
        model = self.model
        queries: list[Tensor] = []
        # The decoder norms the queries before every prediction; its last call gives the final embeddings.
        hook = model.decoder.decoder_norm.register_forward_hook(lambda _m, _i, out: queries.append(out))
        try:
            return self._forward(images, text, queries)
        finally:
            hook.remove()

    def _forward(
        self, images: Tensor, text: tuple[Tensor, ...], queries: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        model = self.model
        x = model.preprocess(images)
        if model.cross_modal:
            named = dict(zip(self.input_names[1:], text, strict=True))
            ids = named["text_ids"]
            chunk = PromptChunk(
                text_ids=ids,
                text_positions=named["text_positions"],
                wls_index=named["wls_index"],
                prompt_class=named["wls_index"],  # unused by the joint pass
                entry=named.get("text_entry", ids),
            )
            features, wls = model._joint_passes(x, [chunk])
            members = named["class_members"]
        else:
            features = model.adapter(x).features
            stored: Tensor = self.get_buffer("text_features")  # (1, P, D)
            wls = stored.expand(x.shape[0], -1, -1)
            members = self.get_buffer("class_members")
        mask_features, multi_scale = model.pixel_decoder(features)
        pred = model.decoder(multi_scale, mask_features, wls)
        class_logits = reduce_by_membership(pred.class_logits, members)
        return class_logits, pred.objectness_logits, pred.mask_logits, queries[-1]

    def example_inputs(self, vocabulary: Vocabulary, image_hw: tuple[int, int]) -> tuple[Tensor, ...]:
        """Inputs of one image of size ``image_hw`` and ``vocabulary``, in ``input_names`` order."""
        images = torch.rand(1, 3, *image_hw) * 255
        inputs: dict[str, Any] = graph_text_inputs(
            vocabulary,
            text_attention=self.model.text_attention,
            max_text_tokens=self.model.prompts.max_text_tokens,
        )
        return (images, *(torch.from_numpy(inputs[n]) for n in self.input_names[1:]))
