"""omtseg: open-vocabulary panoptic segmentation with a frozen BEiT-3 multiway transformer."""

__version__ = "0.1.0"
