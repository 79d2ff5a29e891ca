"""The contracts between gdmd's parts.

The training loop and the target strategies see models, decoders and rewards only through
these protocols, so they know neither SD3 nor the toy domain. Tensor contracts are stated in
each docstring and checked at run time by :mod:`gdmd.contracts`.

Conventions used everywhere:

* time ``t`` is continuous in ``[0, 1]``; ``t = 1`` is pure noise, ``t = 0`` clean data;
* every model call returns an **x0-prediction** (the schedule converts velocity/epsilon);
* images handed to rewards are float ``[B, 3, H, W]`` in ``[0, 1]``;
* a *conditioning* is a ``dict[str, Tensor]`` whose tensors all have the batch first, so the
  loop can index, repeat and concatenate it without knowing what is inside.

This module imports torch only for type checking, so it can be imported by plugin modules
without cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

Conditioning = dict[str, "torch.Tensor"]


@runtime_checkable
class NoiseSchedule(Protocol):
    """How clean data and noise mix, and how a network output becomes an x0-prediction."""

    #: What the network predicts: ``"velocity"`` (flow matching), ``"epsilon"`` or ``"x0"``.
    prediction_type: str

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t = alpha(t) * x0 + sigma(t) * noise``; ``t`` has shape ``[B]``."""
        ...

    def to_x0(self, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """Turn a network ``output`` (of ``prediction_type``) at ``(x_t, t)`` into x0."""
        ...

    def from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_x0`: the network output implied by an x0-prediction."""
        ...

    def training_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """The regression target of the denoising loss for this parameterisation."""
        ...


@runtime_checkable
class Decoder(Protocol):
    """Maps model space (latents or pixels) to images for rewards and sample grids."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, ...]`` latents -> float images ``[B, 3, H, W]`` in ``[0, 1]``.

        Must be differentiable (the ``dmdr`` target back-propagates through it).
        """
        ...


@runtime_checkable
class DiffusionModel(Protocol):
    """A text-conditioned diffusion model: teacher, student and critic alike.

    Implementations are ``torch.nn.Module`` subclasses whose ``forward`` is
    :meth:`predict_x0`, so accelerate can wrap them (DDP/FSDP hooks run on ``forward``).
    """

    #: The noise schedule the model was trained with.
    schedule: NoiseSchedule
    #: Shape of one sample in model space, e.g. ``(3, 32, 32)`` or ``(16, 64, 64)``.
    sample_shape: tuple[int, ...]
    #: Decoder from model space to images (identity-like for pixel-space models).
    decoder: Decoder

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Text -> conditioning with batch ``len(prompts)``; called without grad."""
        ...

    def predict_x0(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """x0-prediction ``[B, *sample_shape]`` at noisy ``x_t`` and times ``t`` ``[B]``.

        With ``guidance_scale`` not ``None`` and ``!= 1``, classifier-free guidance in the
        Ho & Salimans form ``uncond + w * (cond - uncond)`` applied to the x0-prediction.
        """
        ...

    def __call__(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        guidance_scale: float | None = None,
    ) -> torch.Tensor: ...

    def trainable_parameters(self) -> Iterator[torch.nn.Parameter]:
        """The parameters a trainer should optimise (all, or e.g. only LoRA weights)."""
        ...

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any: ...

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the model so its family's factory can load it again from ``directory``."""
        ...


@runtime_checkable
class RewardModel(Protocol):
    """Scores images against prompts; higher is better.

    ``__call__(images [B, 3, H, W] float in [0, 1], prompts: len B) -> Tensor [B]`` (float,
    finite, same device as ``images``). ``differentiable`` says whether gradients flow from
    the score to the pixels; only the ``dmdr`` target needs that.
    """

    differentiable: bool

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor: ...


@runtime_checkable
class PromptSource(Protocol):
    """An endless, seeded stream of training prompts plus a fixed evaluation list."""

    def sample(self, n: int, generator: torch.Generator) -> list[str]:
        """``n`` training prompts drawn with ``generator``."""
        ...

    def evaluation_prompts(self) -> list[str]:
        """Held-out prompts for sampling and evaluation (may be empty)."""
        ...


@dataclass
class BuildContext:
    """What a component factory receives besides its own validated config."""

    device: torch.device
    dtype: torch.dtype
    generator: torch.Generator
    run_dir: Path | None = None
    accelerator: Accelerator | None = None
    #: Other components built before this one, by role (``"teacher"`` for a student that
    #: initialises from it). Factories must not mutate them.
    components: dict[str, Any] = field(default_factory=dict)
    #: The plugin (distribution) name that registered the component being built.
    plugin: str = ""


@dataclass
class WeightedReward:
    """A reward as the recipe mixes it: model, label, weight and normalisation."""

    label: str
    model: RewardModel
    weight: float = 1.0
    #: ``"group"``: z-score within each target group (or batch) before mixing; ``"none"``.
    normalise: str = "group"
    plugin: str = ""


@dataclass
class TargetContext:
    """Everything a target strategy may use for one student update.

    ``x`` is the student sample (x0 in model space) **with grad**, ``[B, *sample_shape]``.
    The callables hide the models: ``real_x0`` is the frozen teacher with CFG, ``fake_x0`` the
    critic (``snapshot`` selects one of the ``num_critic_snapshots`` states kept from the
    critic's inner loop, oldest first; ``None`` is the current critic). Both run without grad.

    ``sample_t(n)`` and ``sample_noise(n)`` draw ``n`` renoise times ``[n]`` and ``n`` noise
    tensors ``[n, *sample_shape]``. When ``n`` is a multiple of ``B``, sample ``i`` owns rows
    ``i * n/B`` to ``(i + 1) * n/B - 1`` (the ``repeat_interleave`` layout) and its draws
    depend only on the run's seed, the step and the sample's index in the global batch, so a
    run on N processes draws what one process with N times the batch draws. ``generator`` is
    a per-process generator: reproducible, but its draws depend on how the batch is split.
    ``sample_noise`` is ``None`` outside the training loop (draw from ``generator`` then).
    ``renoise_range`` is ``(low, high)`` of the times ``sample_t`` draws from (the loop's
    ``[train] renoise_range``), for strategies that lay times out themselves; ``None`` when
    unknown.
    """

    x: torch.Tensor
    prompts: list[str]
    cond_real: Conditioning
    cond_fake: Conditioning
    schedule: NoiseSchedule
    real_x0: Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]
    fake_x0: Callable[[torch.Tensor, torch.Tensor, Conditioning, int | None], torch.Tensor]
    num_critic_snapshots: int
    sample_t: Callable[[int], torch.Tensor]
    decoder: Decoder
    rewards: list[WeightedReward]
    generator: torch.Generator
    step: int
    sample_noise: Callable[[int], torch.Tensor] | None = None
    renoise_range: tuple[float, float] | None = None


@dataclass
class TargetOutput:
    """What a target strategy returns; the loop turns it into the student loss.

    ``targets``: ``[B, K, *sample_shape]``, detached; ``weights``: ``[B, K]``, detached.
    The student loss is ``gradient_target_loss`` over the K targets with these weights, plus
    ``extra_loss`` (which may carry grad, e.g. the ``dmdr`` reward loss).
    """

    targets: torch.Tensor
    weights: torch.Tensor
    extra_loss: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class TargetStrategy(Protocol):
    """Builds the gradient targets of one student update. It never calls ``backward``."""

    #: Whether the strategy needs at least one reward.
    needs_rewards: bool
    #: Whether the strategy needs rewards whose gradients reach the pixels.
    needs_differentiable_reward: bool
    #: How many critic states the loop keeps from each step's critic updates (the newest),
    #: for ``TargetContext.fake_x0(..., snapshot=i)``; 0 when only the current critic is used.
    critic_snapshots: int
    #: How many consecutive rows of the student batch share one prompt: with ``R``, rows
    #: ``i * R`` to ``(i + 1) * R - 1`` are ``R`` samples of the same prompt from different
    #: noise (a group of samples, as GRPO's); 1 when every row has its own prompt. The
    #: per-process batch must be a multiple of it.
    prompt_repeats: int

    def __call__(self, ctx: TargetContext) -> TargetOutput: ...


@dataclass
class ExportInfo:
    """What a model family needs to know of a finished run to export its student.

    ``student_timesteps`` are the trained few-step times (the student samples at these, with
    guidance 1.0); ``step`` the student update the weights come from; ``settings`` the
    student's own validated config (its ``[student]`` table) and ``teacher_settings`` the
    teacher's, so a family can name the base model and the settings a sampler needs in its
    model card. ``dtype`` is the run's compute dtype: what a merged export is saved in.

    For the model card: ``target`` is the target kind and ``target_options`` its settings,
    ``rewards`` maps each reward label to ``{"kind", "weight", "normalise"}``,
    ``teacher_guidance_scale`` is the teacher's CFG scale in training and ``recipe_text`` the
    run's ``resolved.toml``.
    """

    run_dir: Path
    run_name: str
    student_timesteps: list[float]
    step: int
    target: str
    settings: Any = None
    teacher_settings: Any = None
    dtype: torch.dtype | None = None
    target_options: dict[str, Any] = field(default_factory=dict)
    rewards: dict[str, dict[str, Any]] = field(default_factory=dict)
    teacher_guidance_scale: float | None = None
    recipe_text: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Exportable(Protocol):
    """A student model that can write itself in a format other tools load.

    A model family declares that it can export by implementing this on the model its
    factory builds; ``gdmd export`` opens the run, builds the trained student through the
    registry and dispatches here, so the command knows no family. ``export_formats`` lists
    the formats (``"lora"``: an adapter file ``load_lora_weights`` reads; ``"merged"``: a
    full pipeline folder with the student's weights merged in).
    """

    export_formats: tuple[str, ...]

    def export(self, directory: Path, format: str, info: ExportInfo) -> list[Path]:
        """Write the student to ``directory`` in ``format``; return the files written (the
        main file first). Raise :class:`gdmd.errors.GdmdError` naming what is missing."""
        ...
