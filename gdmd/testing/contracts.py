"""Contract checkers: hold a reward, target strategy or diffusion model to its contract.

Each checker drives a component the way gdmd's training loop does and fails with an
:class:`AssertionError` whose message names the component (``reward my_pkg.MyReward``) and
what it got wrong, so a plugin's tests catch a broken contract before a training run does::

    from gdmd.testing import assert_reward_contract

    def test_reward_contract(gdmd_build_context):
        assert_reward_contract(build(MyRewardConfig(), gdmd_build_context))

The contracts are the protocols of :mod:`gdmd.interfaces`; the checks here are the ones a
component can get wrong while still looking right in a quick manual test (batch mates that
leak into a score, a target that keeps its graph, global randomness). They use small inputs
and finish in well under a second for small components.

A component that raises while being checked fails with an :class:`AssertionError` naming it,
chained to the original exception. Wrong arguments to a checker raise :class:`ValueError`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, NoReturn
from unittest import mock

import torch

from gdmd.interfaces import (
    Decoder,
    NoiseSchedule,
    TargetContext,
    TargetOutput,
    WeightedReward,
)

__all__ = [
    "CONTRACT_PROMPTS",
    "assert_model_contract",
    "assert_reward_contract",
    "assert_target_contract",
]

#: Prompts the checkers use when none are given: distinct, so a reward that mixes up which
#: prompt belongs to which image gives different scores.
CONTRACT_PROMPTS: tuple[str, ...] = (
    "a red circle left of a blue square",
    "two green triangles",
    "a yellow star above a purple diamond",
    "three orange crosses",
    "a cyan square below a white circle",
    "one black triangle",
    "a pink diamond right of a gray star",
    "four blue circles",
)

_PREDICTION_TYPES = ("velocity", "epsilon", "v_prediction", "x0")


def _describe(component: object, kind: str) -> str:
    """``reward my_pkg.MyReward``: the kind and where the component's class is defined."""
    if callable(component) and hasattr(component, "__qualname__"):
        owner: Any = component  # a plain function or a class used as a component
    else:
        owner = type(component)
    return f"{kind} {owner.__module__}.{owner.__qualname__}"


def _fail(message: str) -> NoReturn:
    # Raised explicitly instead of with ``assert`` so the checks survive ``python -O``.
    raise AssertionError(message)


def _check(condition: bool, message: str) -> None:
    if not condition:
        _fail(message)


def _summary(value: object) -> str:
    """How a returned value reads in a message: ``Tensor [3] float32 on cpu`` or its type."""
    if isinstance(value, torch.Tensor):
        return f"Tensor {list(value.shape)} {value.dtype} on {value.device}"
    return type(value).__name__


def _exact(a: torch.Tensor) -> torch.Tensor:
    # Compared in float64 on the CPU: some devices (MPS) have no float64.
    return a.detach().cpu().double()


def _max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((_exact(a) - _exact(b)).abs().max())


def _close(a: torch.Tensor, b: torch.Tensor, atol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(_exact(a), _exact(b), rtol=0.0, atol=atol))


def _image_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        height = width = image_size
    else:
        height, width = image_size
    if height < 1 or width < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return height, width


def _prompts(prompts: Sequence[str] | None, batch_size: int) -> list[str]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if prompts is None:
        return [CONTRACT_PROMPTS[i % len(CONTRACT_PROMPTS)] for i in range(batch_size)]
    if len(prompts) != batch_size:
        raise ValueError(f"got {len(prompts)} prompts for batch_size {batch_size}")
    return list(prompts)


def _parameter_device(component: object) -> torch.device | None:
    if isinstance(component, torch.nn.Module):
        for parameter in component.parameters():
            return parameter.device
    return None


@contextmanager
def _global_rng_seeded(seed: int) -> Iterator[None]:
    """Run with the global CPU RNG seeded to ``seed``, restoring its state afterwards; a
    component that draws from it (instead of the generator it was given) then gives
    different results under different seeds."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield


# -- rewards ---------------------------------------------------------------------------------


def _reward_device(reward: object) -> torch.device:
    """Where to put the images: the reward's ``device`` attribute, else the device of its
    parameters (an ``nn.Module``), else the CPU."""
    device = getattr(reward, "device", None)
    if isinstance(device, (str, torch.device)):
        return torch.device(device)
    return _parameter_device(reward) or torch.device("cpu")


def _score(
    reward: Callable[..., Any], who: str, images: torch.Tensor, prompts: list[str]
) -> torch.Tensor:
    """Call the reward and check the result: a finite float Tensor [B] on the images' device."""
    batch = images.shape[0]
    try:
        scores = reward(images, prompts)
    except Exception as exc:
        raise AssertionError(
            f"{who} raised {type(exc).__name__}: {exc} (scoring {batch} images "
            f"{list(images.shape[1:])} with {len(prompts)} prompts)"
        ) from exc
    _check(
        isinstance(scores, torch.Tensor),
        f"{who} returned {_summary(scores)}, expected a torch.Tensor of shape [{batch}]",
    )
    _check(
        tuple(scores.shape) == (batch,),
        f"{who} returned shape {list(scores.shape)} for {batch} images, expected [{batch}]",
    )
    _check(
        scores.is_floating_point(),
        f"{who} returned dtype {scores.dtype}, expected a floating-point dtype",
    )
    _check(
        scores.device == images.device,
        f"{who} returned scores on {scores.device}, but the images were on {images.device}",
    )
    finite = torch.isfinite(scores.detach())
    _check(
        bool(finite.all()),
        f"{who} returned {int((~finite).sum())} non-finite score(s) of {batch}: "
        f"{scores.detach().tolist()}",
    )
    return scores


def assert_reward_contract(
    reward: Any,
    *,
    image_size: int | tuple[int, int] = 32,
    batch_size: int = 3,
    prompts: Sequence[str] | None = None,
    atol: float = 1e-5,
    seed: int = 0,
) -> None:
    """Check that ``reward`` keeps the :class:`~gdmd.interfaces.RewardModel` contract.

    The reward scores seeded random images ``[batch_size, 3, H, W]`` in ``[0, 1]``
    (``image_size`` is ``H = W`` or ``(H, W)``), put on the reward's ``device`` attribute or
    the device of its parameters (CPU otherwise), with ``prompts`` (default: distinct
    prompts from :data:`CONTRACT_PROMPTS`). It must:

    * have a ``differentiable`` attribute that is a ``bool``;
    * work under ``torch.no_grad()`` (gdmd scores targets without grad, whatever the reward)
      and return a finite floating-point Tensor ``[batch_size]`` on the images' device,
      without modifying the images in place;
    * be deterministic: the same images and prompts give the same scores;
    * score each sample independently of its batch mates: the batch permuted, and each
      sample alone, give the same scores (gdmd batches images as it pleases, e.g. all K
      targets of a group in one call);
    * given one prompt fewer than images, raise an exception, or, for a reward that ignores
      its prompts, return the same scores: never scores paired with the wrong prompts;
    * if ``differentiable`` is true, pass a finite, non-zero gradient to the pixels.

    Scores are compared with ``torch.allclose(..., rtol=0, atol=atol)``. Raises
    :class:`AssertionError` naming the reward and the broken rule.
    """
    who = _describe(reward, "reward")
    height, width = _image_size(image_size)
    prompts = _prompts(prompts, batch_size)
    differentiable = getattr(reward, "differentiable", None)
    _check(
        isinstance(differentiable, bool),
        f"{who} must have an attribute `differentiable` (True or False), got {differentiable!r}",
    )
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((batch_size, 3, height, width), generator=generator)
    images = images.to(_reward_device(reward))
    original = images.clone()

    with torch.no_grad():
        scores = _score(reward, who, images, prompts)
        _check(torch.equal(images, original), f"{who} modified the images it scored in place")
        again = _score(reward, who, images, prompts)
        _check(
            _close(again, scores, atol),
            f"{who} is not deterministic: scoring the same images twice gave scores that "
            f"differ by up to {_max_difference(again, scores):.3g} (atol {atol:g})",
        )

        order = torch.randperm(batch_size, generator=generator).tolist()
        if batch_size > 1 and order == sorted(order):
            order = order[1:] + order[:1]
        permuted = _score(reward, who, images[order], [prompts[i] for i in order])
        _check(
            _close(permuted, scores[order], atol),
            f"{who} gives a sample a score that depends on its batch mates: the same "
            f"{batch_size} images in another order scored differently, by up to "
            f"{_max_difference(permuted, scores[order]):.3g} (atol {atol:g})",
        )
        for i in range(batch_size):
            alone = _score(reward, who, images[i : i + 1], prompts[i : i + 1])
            _check(
                _close(alone, scores[i : i + 1], atol),
                f"{who} gives a sample a score that depends on its batch mates: image {i} "
                f"scored {float(alone[0]):.6g} alone and {float(scores[i]):.6g} in a batch "
                f"of {batch_size} (atol {atol:g})",
            )

        if batch_size > 1:
            _check_prompt_mismatch(reward, who, images, prompts, scores, atol)

    if differentiable:
        _check_reward_gradient(reward, who, images, prompts)


def _check_prompt_mismatch(
    reward: Callable[..., Any],
    who: str,
    images: torch.Tensor,
    prompts: list[str],
    scores: torch.Tensor,
    atol: float,
) -> None:
    batch = images.shape[0]
    try:
        result = reward(images, prompts[:-1])
    except Exception:
        return  # the reward refused the mismatch: what the contract asks
    same = isinstance(result, torch.Tensor) and _close(result, scores, atol)
    _check(
        same,
        f"{who} accepted {batch} images with {batch - 1} prompts and returned "
        f"{_summary(result)} that differs from its scores with {batch} prompts; a reward "
        "must raise an error when the number of prompts does not match the images",
    )


def _check_reward_gradient(
    reward: Callable[..., Any], who: str, images: torch.Tensor, prompts: list[str]
) -> None:
    pixels = images.clone().requires_grad_(True)
    with torch.enable_grad():
        scores = _score(reward, who, pixels, prompts)
        _check(
            scores.requires_grad,
            f"{who} says differentiable = True, but its scores carry no gradient (computed "
            "under no_grad, or detached?); set differentiable = False if that is intended",
        )
        (grad,) = torch.autograd.grad(scores.sum(), pixels, allow_unused=True)
    _check(
        grad is not None,
        f"{who} says differentiable = True, but no gradient reaches the pixels",
    )
    assert grad is not None  # for type checkers; _check above has failed otherwise
    _check(bool(torch.isfinite(grad).all()), f"{who} passes a non-finite gradient to the pixels")
    _check(
        bool(grad.abs().sum() > 0),
        f"{who} says differentiable = True, but the gradient reaching the pixels is zero",
    )


# -- target strategies -------------------------------------------------------------------


class _ContractReward:
    """The reward a target is checked with: mean red minus mean blue, differentiable."""

    differentiable = True

    def __init__(self, who: str) -> None:
        self.who = who

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        _check(
            images.ndim == 4 and images.shape[1] == 3,
            f"{self.who} passed a reward images of shape {list(images.shape)}, expected "
            "[B, 3, H, W] (decode samples with ctx.decoder first)",
        )
        _check(
            len(prompts) == images.shape[0],
            f"{self.who} passed a reward {images.shape[0]} images with {len(prompts)} prompts",
        )
        return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2))


class _ContractDecoder:
    """Pixel space ``[-1, 1]`` to images ``[0, 1]``, differentiable."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents + 1.0) / 2.0).clamp(0.0, 1.0)


def _target_context(
    who: str,
    x: torch.Tensor,
    rewards: list[WeightedReward],
    snapshots: int,
    seed: int,
    with_sample_noise: bool,
    repeats: int = 1,
) -> TargetContext:
    """A step context whose teacher and critic are fixed linear maps of ``x_t`` (different
    for every critic snapshot), checking how the strategy calls them. With
    ``with_sample_noise``, ``sample_noise`` is set as in the training loop; without, it is
    ``None`` as outside it. Each prompt fills ``repeats`` consecutive rows, as the loop lays
    out a strategy's ``prompt_repeats``."""
    from gdmd.schedules import FlowMatchingSchedule

    batch = x.shape[0]
    generator = torch.Generator().manual_seed(seed)
    cond = {"tokens": torch.arange(batch).unsqueeze(1)}

    def check_call(model: str, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> None:
        _check(
            tuple(x_t.shape[1:]) == tuple(x.shape[1:]),
            f"{who} called the {model} with x_t of shape {list(x_t.shape)}, expected "
            f"[N, {', '.join(map(str, x.shape[1:]))}]",
        )
        _check(
            tuple(t.shape) == (x_t.shape[0],),
            f"{who} called the {model} with t of shape {list(t.shape)} for "
            f"{x_t.shape[0]} samples, expected [{x_t.shape[0]}]",
        )
        sizes = {key: value.shape[0] for key, value in cond.items()}
        _check(
            all(size == x_t.shape[0] for size in sizes.values()),
            f"{who} called the {model} with {x_t.shape[0]} samples but a conditioning of "
            f"batch {sizes}",
        )

    noise_generator = torch.Generator().manual_seed(seed + 1)

    def sample_noise(n: int) -> torch.Tensor:
        return torch.randn((n, *x.shape[1:]), generator=noise_generator).to(x)

    def real_x0(x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        check_call("teacher", x_t, t, cond)
        return 0.5 * x_t

    def fake_x0(
        x_t: torch.Tensor, t: torch.Tensor, cond: dict, snapshot: int | None
    ) -> torch.Tensor:
        check_call("critic", x_t, t, cond)
        _check(
            snapshot is None or 0 <= snapshot < snapshots,
            f"{who} asked for critic snapshot {snapshot}, but {snapshots} were kept "
            "(its attribute critic_snapshots says how many the loop keeps)",
        )
        scale = 0.3 if snapshot is None else 0.1 * (snapshot + 1)
        return scale * x_t

    return TargetContext(
        x=x,
        prompts=[
            CONTRACT_PROMPTS[(i // repeats) % len(CONTRACT_PROMPTS)] for i in range(batch)
        ],
        cond_real=cond,
        cond_fake=cond,
        schedule=FlowMatchingSchedule(),
        real_x0=real_x0,
        fake_x0=fake_x0,
        num_critic_snapshots=snapshots,
        sample_t=lambda n: torch.rand(n, generator=generator) * 0.9 + 0.05,
        decoder=_ContractDecoder(),
        rewards=rewards,
        generator=generator,
        step=0,
        sample_noise=sample_noise if with_sample_noise else None,
    )


def _run_target(
    target: Callable[[TargetContext], Any],
    who: str,
    ctx: TargetContext,
    global_seed: int,
) -> tuple[Any, int]:
    """Call the strategy; return its output and how many times it called backward."""
    backward_calls = 0
    real_backward = torch.autograd.backward

    def counting_backward(*args: Any, **kwargs: Any) -> Any:
        nonlocal backward_calls
        backward_calls += 1
        return real_backward(*args, **kwargs)

    # Tensor.backward goes through torch.autograd.backward, so counting calls there sees
    # both spellings without changing what they do.
    with (
        _global_rng_seeded(global_seed),
        mock.patch.object(torch.autograd, "backward", counting_backward),
    ):
        try:
            output = target(ctx)
        except AssertionError as exc:
            if str(exc).startswith(who):  # a stand-in model or reward caught a misuse
                raise
            raise AssertionError(f"{who} raised AssertionError: {exc}") from exc
        except Exception as exc:
            raise AssertionError(f"{who} raised {type(exc).__name__}: {exc}") from exc
    return output, backward_calls


def _check_target_output(who: str, output: Any, x: torch.Tensor) -> None:
    _check(
        isinstance(output, TargetOutput),
        f"{who} returned {_summary(output)}, expected a gdmd.interfaces.TargetOutput",
    )
    batch, sample_shape = x.shape[0], tuple(x.shape[1:])
    targets, weights = output.targets, output.weights
    _check(
        isinstance(targets, torch.Tensor),
        f"{who} returned targets of type {type(targets).__name__}, expected a Tensor",
    )
    _check(
        targets.ndim == 2 + len(sample_shape)
        and targets.shape[0] == batch
        and tuple(targets.shape[2:]) == sample_shape
        and targets.shape[1] >= 1,
        f"{who} returned targets of shape {list(targets.shape)} for a student sample of "
        f"shape {list(x.shape)}, expected [{batch}, K, {', '.join(map(str, sample_shape))}]",
    )
    k = targets.shape[1]
    _check(
        targets.dtype == x.dtype and targets.device == x.device,
        f"{who} returned targets as {targets.dtype} on {targets.device}, expected the student "
        f"sample's {x.dtype} on {x.device}",
    )
    _check(
        not targets.requires_grad,
        f"{who} returned targets that carry a gradient; detach them (the student regresses "
        "onto sg(target), see TargetOutput)",
    )
    _check(bool(torch.isfinite(targets).all()), f"{who} returned non-finite targets")
    _check(
        isinstance(weights, torch.Tensor),
        f"{who} returned weights of type {type(weights).__name__}, expected a Tensor",
    )
    _check(
        tuple(weights.shape) == (batch, k),
        f"{who} returned weights of shape {list(weights.shape)} for targets of shape "
        f"{list(targets.shape)}, expected [{batch}, {k}]",
    )
    _check(
        weights.is_floating_point() and weights.device == x.device,
        f"{who} returned weights as {weights.dtype} on {weights.device}, expected a "
        f"floating-point Tensor on {x.device}",
    )
    _check(not weights.requires_grad, f"{who} returned weights that carry a gradient; detach them")
    _check(bool(torch.isfinite(weights).all()), f"{who} returned non-finite weights")
    extra = output.extra_loss
    if extra is not None:
        _check(
            isinstance(extra, torch.Tensor) and extra.ndim == 0 and extra.is_floating_point(),
            f"{who} returned extra_loss {_summary(extra)}, expected None or a scalar float Tensor",
        )
        _check(bool(torch.isfinite(extra.detach())), f"{who} returned a non-finite extra_loss")
    _check(
        isinstance(output.metrics, dict),
        f"{who} returned metrics of type {type(output.metrics).__name__}, expected a dict",
    )
    for name, value in output.metrics.items():
        _check(
            isinstance(name, str)
            and isinstance(value, (int, float))
            and value == value
            and abs(value) != float("inf"),
            f"{who} returned metric {name!r} = {value!r}; metrics are finite Python numbers "
            "(convert tensors with float())",
        )


def assert_target_contract(
    target: Any,
    *,
    image_size: int | tuple[int, int] = 8,
    batch_size: int = 2,
    rewards: Sequence[WeightedReward] | None = None,
    atol: float = 1e-6,
    seed: int = 0,
) -> None:
    """Check that ``target`` keeps the :class:`~gdmd.interfaces.TargetStrategy` contract.

    The strategy gets a :class:`~gdmd.interfaces.TargetContext` for a student sample
    ``[batch_size, 3, H, W]`` in pixel space, with grad, whose teacher and critic are fixed
    linear maps (each critic snapshot a different one) and whose rewards are ``rewards``
    (default: one differentiable stand-in when ``target.needs_rewards``, none otherwise).
    It must:

    * have boolean attributes ``needs_rewards`` and ``needs_differentiable_reward``, a
      non-negative integer ``critic_snapshots`` (0 when it uses only the current critic) and
      a positive integer ``prompt_repeats`` (1 when every sample has its own prompt; with
      ``R``, the batch is rounded up to a multiple of ``R`` and each prompt fills ``R``
      consecutive rows, as in the loop);
    * call the teacher and critic with ``x_t [N, ...]``, ``t [N]`` and a conditioning of
      batch ``N``, and ask only for critic snapshots that were kept;
    * return a :class:`~gdmd.interfaces.TargetOutput`: detached, finite targets
      ``[B, K, ...]`` of the sample's dtype and device; detached, finite weights ``[B, K]``;
      ``extra_loss`` ``None`` or a finite scalar; metrics of finite Python numbers;
    * never call ``backward`` (the loop does), and leave the student sample unchanged;
    * draw randomness only through ``ctx.sample_t``, ``ctx.sample_noise`` and
      ``ctx.generator``: the same seed gives the same targets and weights whatever the
      global RNG state;
    * work with ``ctx.sample_noise`` set (as in the training loop) and ``None`` (outside it).

    Raises :class:`AssertionError` naming the strategy and the broken rule.
    """
    who = _describe(target, "target")
    height, width = _image_size(image_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for flag in ("needs_rewards", "needs_differentiable_reward"):
        value = getattr(target, flag, None)
        _check(
            isinstance(value, bool),
            f"{who} must have an attribute `{flag}` (True or False), got {value!r}",
        )
    _check(
        hasattr(target, "critic_snapshots"),
        f"{who} must have an attribute `critic_snapshots`: how many critic states the loop "
        "keeps for it (0 when it uses only the current critic)",
    )
    snapshots = target.critic_snapshots
    _check(
        isinstance(snapshots, int) and not isinstance(snapshots, bool) and snapshots >= 0,
        f"{who} has critic_snapshots = {snapshots!r}, expected a non-negative int",
    )
    _check(
        hasattr(target, "prompt_repeats"),
        f"{who} must have an attribute `prompt_repeats`: how many consecutive rows of the "
        "student batch share a prompt (1 when every sample has its own)",
    )
    repeats = target.prompt_repeats
    _check(
        isinstance(repeats, int) and not isinstance(repeats, bool) and repeats >= 1,
        f"{who} has prompt_repeats = {repeats!r}, expected a positive int",
    )
    batch_size = -(-batch_size // repeats) * repeats
    if rewards is None:
        contract_reward = WeightedReward("contract", _ContractReward(who), 1.0, "group")
        rewards = [contract_reward] if target.needs_rewards else []
    base = torch.randn(
        (batch_size, 3, height, width), generator=torch.Generator().manual_seed(seed)
    )
    base.requires_grad_(True)
    # A non-leaf with grad, as the student's output is.
    x = base * 1.0
    original = x.detach().clone()

    outputs = []
    # Twice as the loop calls it (to compare), once without ctx.sample_noise (as outside it).
    for global_seed, with_sample_noise in ((seed + 1, True), (seed + 2, True), (seed, False)):
        ctx = _target_context(
            who, x, list(rewards), snapshots, seed, with_sample_noise, repeats
        )
        output, backward_calls = _run_target(target, who, ctx, global_seed)
        _check(
            backward_calls == 0 and base.grad is None,
            f"{who} called backward; a target strategy returns targets, weights and an "
            "optional extra_loss, and the loop back-propagates",
        )
        _check(
            torch.equal(x.detach(), original),
            f"{who} modified the student sample ctx.x in place",
        )
        _check_target_output(who, output, x)
        outputs.append(output)
    first, second, _ = outputs
    same = _close(first.targets, second.targets, atol) and _close(
        first.weights, second.weights, atol
    )
    _check(
        same,
        f"{who} is not deterministic under a seed: two calls with the same ctx.generator "
        "gave different targets or weights; draw random numbers from ctx.sample_t, "
        "ctx.sample_noise or ctx.generator, not the global RNG",
    )


# -- diffusion models --------------------------------------------------------------------


def _model_call(
    who: str, call: Callable[[], Any], what: str, expected: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    try:
        out = call()
    except Exception as exc:
        raise AssertionError(f"{who} raised {type(exc).__name__} in {what}: {exc}") from exc
    _check(
        isinstance(out, torch.Tensor),
        f"{who} returned {_summary(out)} from {what}, expected a Tensor",
    )
    _check(
        tuple(out.shape) == expected,
        f"{who} returned shape {list(out.shape)} from {what}, expected {list(expected)}",
    )
    _check(
        out.is_floating_point() and out.device == device,
        f"{who} returned {out.dtype} on {out.device} from {what}, expected a floating-point "
        f"Tensor on {device}",
    )
    _check(
        bool(torch.isfinite(out.detach()).all()), f"{who} returned non-finite values from {what}"
    )
    return out


def _check_model_attributes(who: str, model: Any) -> tuple[int, ...]:
    schedule = getattr(model, "schedule", None)
    _check(
        isinstance(schedule, NoiseSchedule),
        f"{who} has schedule {schedule!r}, expected a gdmd.interfaces.NoiseSchedule "
        "(e.g. gdmd.schedules.FlowMatchingSchedule)",
    )
    _check(
        getattr(schedule, "prediction_type", None) in _PREDICTION_TYPES,
        f"{who} has a schedule with prediction_type "
        f"{getattr(schedule, 'prediction_type', None)!r}, expected one of "
        f"{', '.join(_PREDICTION_TYPES)}",
    )
    shape = getattr(model, "sample_shape", None)
    _check(
        isinstance(shape, tuple)
        and len(shape) >= 1
        and all(isinstance(n, int) and n > 0 for n in shape),
        f"{who} has sample_shape {shape!r}, expected a tuple of positive ints such as (3, 32, 32)",
    )
    decoder = getattr(model, "decoder", None)
    _check(
        isinstance(decoder, Decoder),
        f"{who} has decoder {decoder!r}, expected an object with decode(latents) -> images",
    )
    assert isinstance(shape, tuple)
    return shape


def _check_conditioning(who: str, cond: Any, batch: int, device: torch.device) -> None:
    _check(
        isinstance(cond, dict) and bool(cond),
        f"{who} returned {_summary(cond)} from encode_prompts, expected a non-empty "
        "dict[str, Tensor]",
    )
    for key, value in cond.items():
        _check(
            isinstance(value, torch.Tensor),
            f"{who} returned conditioning {key!r} of type {type(value).__name__}; every value "
            "must be a Tensor with the batch first",
        )
        _check(
            value.ndim >= 1 and value.shape[0] == batch,
            f"{who} returned conditioning {key!r} of shape {list(value.shape)} for {batch} "
            f"prompts; every tensor must have the batch ({batch}) first",
        )
        _check(
            value.device == device,
            f"{who} returned conditioning {key!r} on {value.device}, expected the model's "
            f"device {device}",
        )


def assert_model_contract(
    model: Any,
    *,
    batch_size: int = 2,
    prompts: Sequence[str] | None = None,
    guidance_scale: float = 3.0,
    trainable: bool = True,
    atol: float = 1e-5,
    seed: int = 0,
) -> None:
    """Check that ``model`` keeps the :class:`~gdmd.interfaces.DiffusionModel` contract.

    The model is called on seeded noisy samples ``[batch_size, *model.sample_shape]`` (in
    the dtype and on the device of its parameters) at times in ``[0.05, 0.95]``, in eval
    mode (its mode is restored afterwards). It must:

    * have a ``schedule`` (a :class:`~gdmd.interfaces.NoiseSchedule` whose ``to_x0`` and
      ``from_x0`` invert each other), a ``sample_shape`` tuple and a ``decoder``;
    * turn prompts into a conditioning ``dict[str, Tensor]``, batch first, on its device;
    * return finite x0-predictions ``[B, *sample_shape]`` on its device from
      ``predict_x0`` and from calling the model (the same values), with
      ``guidance_scale=None`` equal to ``1.0``, and with ``guidance_scale``;
    * be deterministic, leave ``x_t`` unchanged, and predict each sample independently of
      its batch mates (a sample with its conditioning sliced out gives the same prediction);
    * with ``trainable``, return parameters from ``trainable_parameters()`` that receive a
      finite gradient, not all zero, from the prediction;
    * decode predictions to images ``[B, 3, H, W]`` in ``[0, 1]`` with a gradient reaching
      the latents;
    * load its own ``state_dict()`` and write something with ``save_pretrained`` (into a
      temporary directory).

    Raises :class:`AssertionError` naming the model and the broken rule.
    """
    who = _describe(model, "model")
    prompts = _prompts(prompts, batch_size)
    sample_shape = _check_model_attributes(who, model)
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else None
    dtype = dtype or torch.float32
    generator = torch.Generator().manual_seed(seed)
    x_t = torch.randn((batch_size, *sample_shape), generator=generator).to(device, dtype)
    t = (torch.rand(batch_size, generator=generator) * 0.9 + 0.05).to(device)
    expected = (batch_size, *sample_shape)
    was_training = bool(getattr(model, "training", False))
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            try:
                cond = model.encode_prompts(list(prompts))
            except Exception as exc:
                raise AssertionError(
                    f"{who} raised {type(exc).__name__} in encode_prompts: {exc}"
                ) from exc
            _check_conditioning(who, cond, batch_size, device)
            _check_predictions(who, model, x_t, t, cond, guidance_scale, expected, atol)
        _check_schedule(who, model.schedule, x_t, t, generator)
        if trainable:
            _check_model_gradient(who, model, x_t, t, cond, generator)
        _check_decoder(who, model.decoder, x_t, device)
        _check_persistence(who, model)
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)


def _check_predictions(
    who: str,
    model: Any,
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond: dict[str, torch.Tensor],
    guidance_scale: float,
    expected: tuple[int, ...],
    atol: float,
) -> None:
    device = x_t.device
    original = x_t.clone()
    predict = model.predict_x0
    out = _model_call(who, partial(predict, x_t, t, cond), "predict_x0", expected, device)
    _check(torch.equal(x_t, original), f"{who} modified x_t in place in predict_x0")
    again = _model_call(who, partial(predict, x_t, t, cond), "predict_x0", expected, device)
    _check(
        _close(again, out, atol),
        f"{who} is not deterministic: predict_x0 on the same inputs (in eval mode) differed "
        f"by up to {_max_difference(again, out):.3g} (atol {atol:g})",
    )
    called = _model_call(who, partial(model, x_t, t, cond), "model(x_t, t, cond)", expected, device)
    _check(
        _close(called, out, atol),
        f"{who}: calling the model and predict_x0 differ by up to "
        f"{_max_difference(called, out):.3g}; forward must be predict_x0 (accelerate wraps "
        "forward)",
    )
    what = "predict_x0 with guidance_scale=1.0"
    one = _model_call(who, partial(predict, x_t, t, cond, 1.0), what, expected, device)
    _check(
        _close(one, out, atol),
        f"{who}: guidance_scale=1.0 and guidance_scale=None differ by up to "
        f"{_max_difference(one, out):.3g}; both mean no guidance",
    )
    what = f"predict_x0 with guidance_scale={guidance_scale:g}"
    guided = _model_call(
        who, partial(predict, x_t, t, cond, guidance_scale), what, expected, device
    )
    for i in range(x_t.shape[0]):
        sliced = {key: value[i : i + 1] for key, value in cond.items()}
        for scale, batched in ((None, out), (guidance_scale, guided)):
            alone = _model_call(
                who,
                partial(predict, x_t[i : i + 1], t[i : i + 1], sliced, scale),
                "predict_x0 on one sample",
                (1, *expected[1:]),
                device,
            )
            _check(
                _close(alone, batched[i : i + 1], atol),
                f"{who} predicts sample {i} differently alone and in a batch of "
                f"{x_t.shape[0]} (guidance_scale={scale}), by up to "
                f"{_max_difference(alone, batched[i : i + 1]):.3g} (atol {atol:g})",
            )


def _check_schedule(
    who: str, schedule: Any, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator
) -> None:
    x0 = torch.randn(x_t.shape, generator=generator).to(x_t)
    try:
        back = schedule.to_x0(x_t, t, schedule.from_x0(x_t, t, x0))
    except Exception as exc:
        raise AssertionError(
            f"{who}'s schedule raised {type(exc).__name__} converting x0: {exc}"
        ) from exc
    _check(
        isinstance(back, torch.Tensor) and _close(back.float(), x0.float(), 1e-3),
        f"{who}'s schedule: to_x0(x_t, t, from_x0(x_t, t, x0)) does not give x0 back",
    )


def _check_model_gradient(
    who: str,
    model: Any,
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond: dict[str, torch.Tensor],
    generator: torch.Generator,
) -> None:
    parameters = [p for p in model.trainable_parameters() if p.requires_grad]
    _check(
        bool(parameters),
        f"{who}: trainable_parameters() gave no parameters that require grad; a student or "
        "critic needs some (pass trainable=False for a teacher-only model)",
    )
    with torch.enable_grad():
        out = model.predict_x0(x_t, t, cond)
        # A random probe instead of out.sum(): sums can cancel exactly by symmetry.
        probe = torch.randn(out.shape, generator=generator).to(out)
        grads = torch.autograd.grad((out * probe).sum(), parameters, allow_unused=True)
    present = [g for g in grads if g is not None]
    _check(
        bool(present) and any(bool(g.abs().sum() > 0) for g in present),
        f"{who}: no gradient reaches trainable_parameters() from predict_x0",
    )
    _check(
        all(bool(torch.isfinite(g).all()) for g in present),
        f"{who}: predict_x0 passes non-finite gradients to its parameters",
    )


def _check_decoder(who: str, decoder: Any, x_t: torch.Tensor, device: torch.device) -> None:
    latents = x_t.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        try:
            images = decoder.decode(latents)
        except Exception as exc:
            raise AssertionError(f"{who}'s decoder raised {type(exc).__name__}: {exc}") from exc
        _check(
            isinstance(images, torch.Tensor)
            and images.ndim == 4
            and images.shape[0] == x_t.shape[0]
            and images.shape[1] == 3
            and images.is_floating_point(),
            f"{who}'s decoder returned {_summary(images)}, expected float images [B, 3, H, W]",
        )
        low, high = float(images.detach().min()), float(images.detach().max())
        _check(
            low >= -1e-4 and high <= 1 + 1e-4,
            f"{who}'s decoder returned values in [{low:.3g}, {high:.3g}], expected [0, 1]",
        )
        _check(
            images.requires_grad,
            f"{who}'s decoder is not differentiable (the dmdr target back-propagates through it)",
        )
        (grad,) = torch.autograd.grad(images.sum(), latents, allow_unused=True)
    _check(
        grad is not None and bool(grad.abs().sum() > 0),
        f"{who}'s decoder passes no gradient to the latents",
    )


def _check_persistence(who: str, model: Any) -> None:
    try:
        model.load_state_dict(model.state_dict())
    except Exception as exc:
        raise AssertionError(
            f"{who} cannot load its own state_dict(): {type(exc).__name__}: {exc}"
        ) from exc
    with tempfile.TemporaryDirectory(prefix="gdmd-contract-") as directory:
        try:
            model.save_pretrained(directory)
        except Exception as exc:
            raise AssertionError(
                f"{who} raised {type(exc).__name__} in save_pretrained: {exc}"
            ) from exc
        _check(
            any(Path(directory).iterdir()),
            f"{who}: save_pretrained wrote nothing into the directory it was given",
        )
