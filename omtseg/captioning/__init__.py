"""Segment captioning in the SCA design, over a trained OMTSeg: one package for the modules and inference.

- :mod:`.captioner`: :class:`~omtseg.captioning.captioner.SegmentCaptioner`, the query-based feature mixer
  feeding a causal language model.
- :mod:`.language_model`: loading that language model from a local directory (and a tiny one for tests).
- :mod:`.inference`: one segmenter pass kept for the captioner, region-to-query matching, captions for
  predicted segments and for box or point prompts.

Its LightningModule is :class:`omtseg.lit_captioner.CaptionerModule`; its checkpoints are written and read by
:mod:`omtseg.checkpoint`; its datasets are :mod:`omtseg.data.regions` (region-caption data) and
:mod:`omtseg.data.caption_text` (captions generated from class names or synthetic scenes).
"""
