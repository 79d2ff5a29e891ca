"""The target strategy contract: :func:`assert_target_contract`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from unittest import mock

import torch

from gdmd.interfaces import TargetContext, TargetOutput, WeightedReward
from gdmd.testing.contracts.common import (
    CONTRACT_PROMPTS,
    check,
    close,
    describe,
    image_shape,
    summary,
)

__all__ = ["assert_target_contract"]


@contextmanager
def _global_rng_seeded(seed: int) -> Iterator[None]:
    """Run with the global CPU RNG seeded to ``seed``, restoring its state afterwards; a
    component that draws from it (instead of the generator it was given) then gives
    different results under different seeds."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield


class _ContractReward:
    """The reward a target is checked with: mean red minus mean blue, differentiable."""

    differentiable = True

    def __init__(self, who: str) -> None:
        self.who = who

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check(
            images.ndim == 4 and images.shape[1] == 3,
            f"{self.who} passed a reward images of shape {list(images.shape)}, expected "
            "[B, 3, H, W] (decode samples with ctx.decoder first)",
        )
        check(
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
        check(
            tuple(x_t.shape[1:]) == tuple(x.shape[1:]),
            f"{who} called the {model} with x_t of shape {list(x_t.shape)}, expected "
            f"[N, {', '.join(map(str, x.shape[1:]))}]",
        )
        check(
            tuple(t.shape) == (x_t.shape[0],),
            f"{who} called the {model} with t of shape {list(t.shape)} for "
            f"{x_t.shape[0]} samples, expected [{x_t.shape[0]}]",
        )
        sizes = {key: value.shape[0] for key, value in cond.items()}
        check(
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
        check(
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
    check(
        isinstance(output, TargetOutput),
        f"{who} returned {summary(output)}, expected a gdmd.interfaces.TargetOutput",
    )
    batch, sample_shape = x.shape[0], tuple(x.shape[1:])
    targets, weights = output.targets, output.weights
    check(
        isinstance(targets, torch.Tensor),
        f"{who} returned targets of type {type(targets).__name__}, expected a Tensor",
    )
    check(
        targets.ndim == 2 + len(sample_shape)
        and targets.shape[0] == batch
        and tuple(targets.shape[2:]) == sample_shape
        and targets.shape[1] >= 1,
        f"{who} returned targets of shape {list(targets.shape)} for a student sample of "
        f"shape {list(x.shape)}, expected [{batch}, K, {', '.join(map(str, sample_shape))}]",
    )
    k = targets.shape[1]
    check(
        targets.dtype == x.dtype and targets.device == x.device,
        f"{who} returned targets as {targets.dtype} on {targets.device}, expected the student "
        f"sample's {x.dtype} on {x.device}",
    )
    check(
        not targets.requires_grad,
        f"{who} returned targets that carry a gradient; detach them (the student regresses "
        "onto sg(target), see TargetOutput)",
    )
    check(bool(torch.isfinite(targets).all()), f"{who} returned non-finite targets")
    check(
        isinstance(weights, torch.Tensor),
        f"{who} returned weights of type {type(weights).__name__}, expected a Tensor",
    )
    check(
        tuple(weights.shape) == (batch, k),
        f"{who} returned weights of shape {list(weights.shape)} for targets of shape "
        f"{list(targets.shape)}, expected [{batch}, {k}]",
    )
    check(
        weights.is_floating_point() and weights.device == x.device,
        f"{who} returned weights as {weights.dtype} on {weights.device}, expected a "
        f"floating-point Tensor on {x.device}",
    )
    check(not weights.requires_grad, f"{who} returned weights that carry a gradient; detach them")
    check(bool(torch.isfinite(weights).all()), f"{who} returned non-finite weights")
    extra = output.extra_loss
    if extra is not None:
        check(
            isinstance(extra, torch.Tensor) and extra.ndim == 0 and extra.is_floating_point(),
            f"{who} returned extra_loss {summary(extra)}, expected None or a scalar float Tensor",
        )
        check(bool(torch.isfinite(extra.detach())), f"{who} returned a non-finite extra_loss")
    check(
        isinstance(output.metrics, dict),
        f"{who} returned metrics of type {type(output.metrics).__name__}, expected a dict",
    )
    for name, value in output.metrics.items():
        check(
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
    who = describe(target, "target")
    height, width = image_shape(image_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    snapshots, repeats = _check_target_attributes(who, target)
    batch_size = -(-batch_size // repeats) * repeats
    if rewards is None:
        contract_reward = WeightedReward("contract", _ContractReward(who), 1.0, "group")
        rewards = [contract_reward] if target.needs_rewards else []
    base = torch.randn(
        (batch_size, 3, height, width), generator=torch.Generator().manual_seed(seed)
    )
    base.requires_grad_(True)
    first, second = _call_as_the_loop_does(target, who, base, rewards, snapshots, repeats, seed)
    same = close(first.targets, second.targets, atol) and close(
        first.weights, second.weights, atol
    )
    check(
        same,
        f"{who} is not deterministic under a seed: two calls with the same ctx.generator "
        "gave different targets or weights; draw random numbers from ctx.sample_t, "
        "ctx.sample_noise or ctx.generator, not the global RNG",
    )


def _check_target_attributes(who: str, target: Any) -> tuple[int, int]:
    """Check the attributes the loop reads before calling the strategy; return its
    ``critic_snapshots`` and ``prompt_repeats``."""
    for flag in ("needs_rewards", "needs_differentiable_reward"):
        value = getattr(target, flag, None)
        check(
            isinstance(value, bool),
            f"{who} must have an attribute `{flag}` (True or False), got {value!r}",
        )
    check(
        hasattr(target, "critic_snapshots"),
        f"{who} must have an attribute `critic_snapshots`: how many critic states the loop "
        "keeps for it (0 when it uses only the current critic)",
    )
    snapshots = target.critic_snapshots
    check(
        isinstance(snapshots, int) and not isinstance(snapshots, bool) and snapshots >= 0,
        f"{who} has critic_snapshots = {snapshots!r}, expected a non-negative int",
    )
    check(
        hasattr(target, "prompt_repeats"),
        f"{who} must have an attribute `prompt_repeats`: how many consecutive rows of the "
        "student batch share a prompt (1 when every sample has its own)",
    )
    repeats = target.prompt_repeats
    check(
        isinstance(repeats, int) and not isinstance(repeats, bool) and repeats >= 1,
        f"{who} has prompt_repeats = {repeats!r}, expected a positive int",
    )
    return snapshots, repeats


def _call_as_the_loop_does(
    target: Any,
    who: str,
    base: torch.Tensor,
    rewards: Sequence[WeightedReward],
    snapshots: int,
    repeats: int,
    seed: int,
) -> tuple[TargetOutput, TargetOutput]:
    """Call the strategy three times on the student sample ``base * 1``, checking each call
    and its output; return the outputs of the two calls made as the loop makes them."""
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
        check(
            backward_calls == 0 and base.grad is None,
            f"{who} called backward; a target strategy returns targets, weights and an "
            "optional extra_loss, and the loop back-propagates",
        )
        check(
            torch.equal(x.detach(), original),
            f"{who} modified the student sample ctx.x in place",
        )
        _check_target_output(who, output, x)
        outputs.append(output)
    first, second, _ = outputs
    return first, second
