"""Fixtures shared by the modeling tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Tiny ops on a shared 2-core machine: OpenMP threads spin-waiting on each other make these forward
    # passes several times slower than a single thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
