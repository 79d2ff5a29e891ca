"""Noise schedules and the conversions between network outputs and x0-predictions.

Time is continuous, ``t`` in ``[0, 1]``, ``t = 1`` pure noise. A schedule maps
``(x0, noise, t)`` to ``x_t = alpha(t) x0 + sigma(t) noise`` and turns a network output of its
parameterisation (velocity, epsilon, x0) back into an x0-prediction, so the distillation code
only ever sees x0.

Also here: :class:`RenoiseSampler`, the distribution of the DMD/critic renoise time, with
DMDR's "dynamic renoise" (a Beta(a, b) that anneals to uniform).
"""

from __future__ import annotations

import math

import torch


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample times ``[B]`` to broadcast against ``like`` ``[B, ...]``."""
    return t.reshape(t.shape[0], *([1] * (like.ndim - 1))).to(like.dtype)


class FlowMatchingSchedule:
    """Rectified flow: ``x_t = (1 - t) x0 + t eps``; the network predicts ``v = eps - x0``.

    ``shift`` is SD3's timestep shift ``t' = s t / (1 + (s - 1) t)``, applied by
    :meth:`shift_time` (used to place a sampler's timesteps, not inside ``add_noise``).
    """

    prediction_type = "velocity"

    def __init__(self, shift: float = 1.0) -> None:
        if shift <= 0:
            raise ValueError(f"shift must be positive, got {shift}")
        self.shift = float(shift)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - t

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def shift_time(self, t: torch.Tensor) -> torch.Tensor:
        s = self.shift
        return s * t / (1.0 + (s - 1.0) * t)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = _expand(t, x0)
        return (1.0 - tt) * x0 + tt * noise

    def to_x0(self, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        # x_t = x0 + t (eps - x0) = x0 + t v  =>  x0 = x_t - t v
        return x_t - _expand(t, x_t) * output

    def from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_x0`: the velocity implied by an x0-prediction."""
        return (x_t - x0) / _expand(t, x_t)

    def training_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        return noise - x0

    def __repr__(self) -> str:
        return f"FlowMatchingSchedule(shift={self.shift})"


class VPSchedule:
    """Variance-preserving DDPM schedule in continuous time.

    ``alpha_bar`` comes from the discrete "scaled linear" betas of Stable Diffusion
    (``num_train_timesteps`` of them), linearly interpolated at ``t * (N - 1)``;
    ``x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps``. ``prediction_type`` is
    ``"epsilon"``, ``"v_prediction"`` (``v = sqrt(ab) eps - sqrt(1-ab) x0``) or ``"x0"``.
    """

    def __init__(
        self,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        num_train_timesteps: int = 1000,
        prediction_type: str = "epsilon",
    ) -> None:
        if prediction_type not in ("epsilon", "v_prediction", "x0"):
            raise ValueError(f"unknown prediction_type {prediction_type!r}")
        self.prediction_type = prediction_type
        self.num_train_timesteps = num_train_timesteps
        betas = (
            torch.linspace(
                math.sqrt(beta_start),
                math.sqrt(beta_end),
                num_train_timesteps,
                dtype=torch.float64,
            )
            ** 2
        )
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        table = self.alphas_cumprod.to(t.device)
        pos = t.to(torch.float64).clamp(0, 1) * (self.num_train_timesteps - 1)
        lo = pos.floor().long().clamp(max=self.num_train_timesteps - 1)
        hi = (lo + 1).clamp(max=self.num_train_timesteps - 1)
        frac = pos - lo.to(torch.float64)
        return (table[lo] * (1 - frac) + table[hi] * frac).to(t.dtype)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.alpha_bar(t).sqrt()

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return (1.0 - self.alpha_bar(t)).sqrt()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = _expand(self.alpha(t), x0), _expand(self.sigma(t), x0)
        return a * x0 + s * noise

    def to_x0(self, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        a, s = _expand(self.alpha(t), x_t), _expand(self.sigma(t), x_t)
        if self.prediction_type == "epsilon":
            return (x_t - s * output) / a
        if self.prediction_type == "v_prediction":
            return a * x_t - s * output
        return output

    def from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_x0`: the network output implied by an x0-prediction."""
        a, s = _expand(self.alpha(t), x_t), _expand(self.sigma(t), x_t)
        if self.prediction_type == "epsilon":
            return (x_t - a * x0) / s
        if self.prediction_type == "v_prediction":
            # x0 = a x_t - s v  =>  v = (a x_t - x0) / s
            return (a * x_t - x0) / s
        return x0

    def training_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            a, s = _expand(self.alpha(t), x0), _expand(self.sigma(t), x0)
            return a * noise - s * x0
        return x0

    def __repr__(self) -> str:
        return (
            f"VPSchedule(num_train_timesteps={self.num_train_timesteps}, "
            f"prediction_type={self.prediction_type!r})"
        )


class RenoiseSampler:
    """Draws the renoise time ``t`` of DMD and critic updates.

    Uniform on ``[low, high]``, or, with ``beta = (a, b)``, ``low + (high - low) * u`` with
    ``u ~ Beta(a_s, b_s)`` where the shape parameters anneal from ``(a, b)`` at step 0 to
    ``(1, 1)`` (uniform) at ``anneal_steps`` on a half-cosine: DMDR's "dynamic renoise"
    (Jiang et al., 2025), which starts with mostly high noise levels.

    Sampling uses only the given ``torch.Generator`` (inverse CDF on a fine grid), so runs are
    reproducible and resumable.
    """

    _GRID = 4096

    def __init__(
        self,
        low: float,
        high: float,
        beta: tuple[float, float] | None = None,
        anneal_steps: int = 0,
    ) -> None:
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"need 0 <= low < high <= 1, got [{low}, {high}]")
        self.low, self.high = float(low), float(high)
        self.beta = beta
        self.anneal_steps = int(anneal_steps)

    def shape_at(self, step: int) -> tuple[float, float] | None:
        """The Beta shape parameters in force at ``step``, or ``None`` once uniform."""
        if self.beta is None:
            return None
        if self.anneal_steps <= 0:
            decay = 1.0
        else:
            progress = min(step / self.anneal_steps, 1.0)
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        a = 1.0 + (self.beta[0] - 1.0) * decay
        b = 1.0 + (self.beta[1] - 1.0) * decay
        if abs(a - 1.0) < 1e-9 and abs(b - 1.0) < 1e-9:
            return None
        return a, b

    def sample(
        self, n: int, step: int, generator: torch.Generator, device: torch.device | None = None
    ) -> torch.Tensor:
        """``n`` times in ``[low, high]`` (float32, on ``device``)."""
        u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
        shape = self.shape_at(step)
        if shape is not None:
            u = self._beta_inverse_cdf(u, *shape)
        t = self.low + (self.high - self.low) * u
        return t.to(device=device or generator.device, dtype=torch.float32)

    def _beta_inverse_cdf(self, u: torch.Tensor, a: float, b: float) -> torch.Tensor:
        # Midpoint-rule CDF of the Beta density on a fine grid, then linear interpolation of
        # its inverse; accurate to ~1/_GRID, plenty for a noise-level distribution.
        grid = (torch.arange(self._GRID, dtype=torch.float64, device=u.device) + 0.5) / self._GRID
        log_pdf = (a - 1.0) * torch.log(grid) + (b - 1.0) * torch.log1p(-grid)
        pdf = torch.exp(log_pdf - log_pdf.max())
        cdf = torch.cat([torch.zeros(1, dtype=torch.float64, device=u.device), pdf.cumsum(0)])
        cdf = cdf / cdf[-1]
        edges = torch.linspace(0.0, 1.0, self._GRID + 1, dtype=torch.float64, device=u.device)
        idx = torch.searchsorted(cdf, u.clamp(0.0, 1.0), right=True).clamp(1, self._GRID)
        c0, c1 = cdf[idx - 1], cdf[idx]
        frac = ((u - c0) / (c1 - c0).clamp_min(1e-300)).clamp(0.0, 1.0)
        return edges[idx - 1] + frac * (edges[idx] - edges[idx - 1])

    def __repr__(self) -> str:
        return (
            f"RenoiseSampler(low={self.low}, high={self.high}, beta={self.beta}, "
            f"anneal_steps={self.anneal_steps})"
        )
