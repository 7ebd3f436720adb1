"""Deployment: the segmenter exported to ONNX (:mod:`.export`, :mod:`.graph`) and run by ONNX Runtime
(:mod:`.runtime`); ``omtseg export`` and ``omtseg segment --onnx`` are the commands, ``Segmenter.from_onnx``
the Python face."""
