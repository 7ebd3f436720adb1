"""omtseg: open-vocabulary panoptic segmentation with a frozen BEiT-3 multiway transformer.

``from omtseg import Segmenter`` is the Python face (:mod:`omtseg.api`); it is imported on first use, so
``import omtseg`` (and ``omtseg fit``) load nothing of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Segmenter", "SegmentationResult"]

if TYPE_CHECKING:
    from omtseg.api import SegmentationResult, Segmenter


def __getattr__(name: str) -> Any:
    if name in __all__:
        from omtseg import api

        return getattr(api, name)
    raise AttributeError(f"module 'omtseg' has no attribute {name!r}")
