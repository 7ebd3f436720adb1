"""The prediction writer's image recovery (crop, resize, un-flip) back to the file's frame."""

from __future__ import annotations

import torch

from omtseg.callbacks import original_image
from omtseg.types import ImageInfo


def test_original_image_cuts_padding_resizes_and_unflips() -> None:
    image = torch.zeros(3, 8, 12, dtype=torch.uint8)
    image[:, :6, :10] = 100  # content 6 x 10, padded to 8 x 12
    image[0, :6, :5] = 200  # left half red-ish, so a flip is visible
    info = ImageInfo(image_id=1, file_name="a.jpg", orig_size=(3, 5), resized_size=(6, 10), flipped=True)
    out = original_image(image, info)
    assert out.shape == (3, 5, 3) and out.dtype.name == "uint8"
    assert out[:, -1, 0].tolist() == [200, 200, 200]  # the flipped-left half is on the right again
    assert out[:, 0, 0].tolist() == [100, 100, 100]
    unscaled = ImageInfo(image_id=1, file_name="a.jpg", orig_size=(6, 10), resized_size=(6, 10))
    same = original_image(image, unscaled)
    assert same.shape == (6, 10, 3) and same[0, 0, 0] == 200
