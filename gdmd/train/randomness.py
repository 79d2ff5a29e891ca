"""Random draws that depend only on (seed, step, draw site, global sample index).

Sample ``j`` of the global batch gets its own generator at every draw site, wherever it is
computed, so a run on N processes with ``b`` samples each draws exactly the numbers a run on
one process with ``N * b`` samples draws (the layout FastVideo, DMDR and accelerate's own
tests rely on for "N x b equals 1 x N*b"). Draws shared by the whole batch (the backward
simulation's step) come from a generator of the site alone, identical on every process.

Nothing here carries state from one step to the next: resuming at any step needs no RNG
state, and the stream of step ``s`` is the same whether the run started at 0 or resumed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from gdmd.interfaces import PromptSource
from gdmd.schedules import RenoiseSampler


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts`` (stable across processes, machines and Python runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class SiteDraws:
    """The draws of one site (say, critic update 2 of step 17) for one process's samples.

    ``indices``: the global indices of this process's samples. Each sample's draws come from
    its own generator, in program order, so they do not depend on which other samples share
    the batch. ``device``: where the drawn tensors go (they are drawn on the CPU, as before,
    so a GPU run draws the same numbers as a CPU run).
    """

    def __init__(
        self,
        seed: int,
        step: int,
        site: Sequence[int | str],
        indices: Sequence[int],
        device: torch.device,
        process_index: int = 0,
    ) -> None:
        self.step = step
        self.device = device
        self.per_sample = [
            torch.Generator().manual_seed(derive_seed(seed, step, *site, "sample", i))
            for i in indices
        ]
        self.shared = torch.Generator().manual_seed(derive_seed(seed, step, *site, "batch"))
        #: For code that draws from one generator for the whole batch (a third-party target
        #: using ``TargetContext.generator``): reproducible, but it depends on the layout.
        self.process = torch.Generator().manual_seed(
            derive_seed(seed, step, *site, "process", process_index)
        )

    @property
    def batch_size(self) -> int:
        return len(self.per_sample)

    def shared_index(self, high: int) -> int:
        """One integer in ``[0, high)`` shared by the whole global batch."""
        return int(torch.randint(high, (1,), generator=self.shared))

    def prompts(self, source: PromptSource, repeats: int = 1) -> list[str]:
        """One training prompt per sample; with ``repeats = R``, this process's samples
        ``i*R .. i*R + R-1`` share the prompt of sample ``i*R``. Every sample draws a prompt
        either way, so the rest of each sample's stream does not depend on ``repeats``. With
        ``R`` dividing the per-process batch the groups are the same on any number of
        processes."""
        drawn = [source.sample(1, g)[0] for g in self.per_sample]
        return [drawn[(i // repeats) * repeats] for i in range(len(drawn))]

    def noise(self, shape: Sequence[int], per_sample: int = 1) -> torch.Tensor:
        """``[B * per_sample, *shape]`` standard normal; sample ``i`` owns rows
        ``i * per_sample`` to ``(i + 1) * per_sample - 1`` (the ``repeat_interleave`` layout)."""
        rows = [torch.randn((per_sample, *shape), generator=g) for g in self.per_sample]
        return torch.cat(rows).to(self.device)

    def times(self, sampler: RenoiseSampler, per_sample: int = 1) -> torch.Tensor:
        """``[B * per_sample]`` renoise times, in the same layout as :meth:`noise`."""
        rows = [sampler.sample(per_sample, self.step, g) for g in self.per_sample]
        return torch.cat(rows).to(self.device)

    def times_for(self, sampler: RenoiseSampler, n: int) -> torch.Tensor:
        """``n`` times for a target strategy: per sample when ``n`` is a multiple of the
        batch, else from the process generator (reproducible, layout-dependent)."""
        b = self.batch_size
        if b and n % b == 0:
            return self.times(sampler, n // b)
        return sampler.sample(n, self.step, self.process, self.device)

    def noise_for(self, n: int, shape: Sequence[int]) -> torch.Tensor:
        """``n`` noise tensors for a target strategy, laid out like :meth:`times_for`."""
        b = self.batch_size
        if b and n % b == 0:
            return self.noise(shape, n // b)
        return torch.randn((n, *shape), generator=self.process).to(self.device)
