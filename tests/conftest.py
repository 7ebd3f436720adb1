"""Suite-wide settings.

One intra-op thread per test process: `make test` runs two xdist workers on two cores, and tiny models
gain nothing from more threads while oversubscription made single steps up to 50x slower.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
