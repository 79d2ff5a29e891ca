"""Toy-domain tests run torch on one thread.

The suite runs on a 2-core machine that other processes share; a 2-thread torch process
there spends most of its time waiting at thread barriers (about 7x slower on these small
models), so the toy tests pin torch to one thread and restore the setting afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
