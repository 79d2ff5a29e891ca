"""SDXL's noise schedule in gdmd's continuous time: the scheduler's own DDPM table.

SDXL was trained on ``N = 1000`` discrete timesteps ``k = 0 .. N - 1`` with
``x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps`` and betas "scaled_linear" from 0.00085 to
0.012. gdmd's time ``t`` lies in ``[0, 1]`` with ``t = 1`` pure noise; this module places
timestep ``k`` at

    t = (k + 1) / N,        i.e.  k(t) = N t - 1,

so ``t = 1`` is the scheduler's last timestep 999, and DMD2's four student timesteps
999, 749, 499, 249 are exactly ``t = 1, 0.75, 0.5, 0.25`` (four binary-exact floats, gdmd's
default 4-step times). ``t = 0`` is clean data (``abar = 1``, one step below ``k = 0``).
Between grid points ``abar`` is interpolated linearly in ``k``, so at every ``t = (k + 1) / N``
``alpha`` and ``sigma`` are the scheduler's own, to the last bit of its float32 table. The
UNet is given the fractional timestep ``N t - 1`` (its sinusoidal embedding takes floats).

gdmd's core :class:`gdmd.schedules.VPSchedule` places the grid at ``t = k / (N - 1)`` instead,
which makes 749, 499 and 249 the times 0.74975, 0.4995 and 0.24925; hence this family's own
class, built from the pipeline's ``alphas_cumprod``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: The prediction types of diffusers' DDPM-family schedulers this family handles.
PREDICTION_TYPES = ("epsilon", "v_prediction")


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1))).to(like.dtype)


class DiscreteDDPMSchedule:
    """A :class:`~gdmd.interfaces.NoiseSchedule` on a DDPM ``alphas_cumprod`` table.

    ``x_t = alpha(t) x0 + sigma(t) eps`` with ``alpha = sqrt(abar(t))``,
    ``sigma = sqrt(1 - abar(t))`` and ``abar`` placed as the module docstring says. The
    network predicts ``eps`` (``"epsilon"``) or ``v = alpha eps - sigma x0``
    (``"v_prediction"``).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon") -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}"
            )
        table = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if table.numel() < 2:
            raise ValueError("alphas_cumprod needs at least two entries")
        self.prediction_type = prediction_type
        self.num_train_timesteps = int(table.numel())
        #: ``abar`` at grid positions ``k = -1 .. N - 1`` (``k = -1``: clean data).
        self._table = torch.cat([torch.ones(1, dtype=torch.float64), table])

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any]) -> DiscreteDDPMSchedule:
        """The schedule of a diffusers scheduler config (SDXL ships EulerDiscreteScheduler),
        with the table computed by diffusers' own ``DDPMScheduler`` from its betas."""
        from diffusers import DDPMScheduler

        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
        scheduler: Any = DDPMScheduler(**{k: config[k] for k in keys if k in config})
        return cls(
            scheduler.alphas_cumprod, str(config.get("prediction_type", "epsilon") or "epsilon")
        )

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The scheduler timestep ``N t - 1`` of gdmd times ``t`` (float32, same device)."""
        return t.to(torch.float64).mul(self.num_train_timesteps).sub(1.0).float()

    def time_of(self, timestep: float | torch.Tensor) -> torch.Tensor:
        """gdmd's time ``(k + 1) / N`` of scheduler timesteps ``k``."""
        k = torch.as_tensor(timestep, dtype=torch.float64)
        return ((k + 1.0) / self.num_train_timesteps).float()

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        table = self._table.to(t.device)
        pos = t.to(torch.float64).clamp(0.0, 1.0) * self.num_train_timesteps  # = k + 1
        lo = pos.floor().long().clamp(max=self.num_train_timesteps)
        hi = (lo + 1).clamp(max=self.num_train_timesteps)
        frac = pos - lo.to(torch.float64)
        value = table[lo] + frac * (table[hi] - table[lo])
        return value.to(t.dtype if t.is_floating_point() else torch.float32)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.alpha_bar(t).sqrt()

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return (1.0 - self.alpha_bar(t)).sqrt()

    def _alpha_sigma(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        abar = self.alpha_bar(t.to(torch.float64))
        return _expand(abar.sqrt(), like), _expand((1.0 - abar).sqrt(), like)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self._alpha_sigma(t, x0)
        return a * x0 + s * noise

    def to_x0(self, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        a, s = self._alpha_sigma(t, x_t)
        if self.prediction_type == "epsilon":
            return (x_t - s * output) / a
        return a * x_t - s * output  # v-prediction: x0 = alpha x_t - sigma v

    def from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_x0`: the network output implied by an x0-prediction."""
        a, s = self._alpha_sigma(t, x_t)
        if self.prediction_type == "epsilon":
            return (x_t - a * x0) / s
        return (a * x_t - x0) / s

    def training_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return noise
        a, s = self._alpha_sigma(t, x0)
        return a * noise - s * x0

    def __repr__(self) -> str:
        return (
            f"DiscreteDDPMSchedule(num_train_timesteps={self.num_train_timesteps}, "
            f"prediction_type={self.prediction_type!r})"
        )
