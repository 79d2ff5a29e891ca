"""The diffusion model contract: :func:`assert_model_contract`."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from gdmd.interfaces import Decoder, NoiseSchedule
from gdmd.testing.contracts.common import (
    batch_prompts,
    check,
    close,
    describe,
    max_difference,
    summary,
)

__all__ = ["assert_model_contract"]

_PREDICTION_TYPES = ("velocity", "epsilon", "v_prediction", "x0")


def _model_call(
    who: str, call: Callable[[], Any], what: str, expected: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    try:
        out = call()
    except Exception as exc:
        raise AssertionError(f"{who} raised {type(exc).__name__} in {what}: {exc}") from exc
    check(
        isinstance(out, torch.Tensor),
        f"{who} returned {summary(out)} from {what}, expected a Tensor",
    )
    check(
        tuple(out.shape) == expected,
        f"{who} returned shape {list(out.shape)} from {what}, expected {list(expected)}",
    )
    check(
        out.is_floating_point() and out.device == device,
        f"{who} returned {out.dtype} on {out.device} from {what}, expected a floating-point "
        f"Tensor on {device}",
    )
    check(
        bool(torch.isfinite(out.detach()).all()), f"{who} returned non-finite values from {what}"
    )
    return out


def _check_model_attributes(who: str, model: Any) -> tuple[int, ...]:
    schedule = getattr(model, "schedule", None)
    check(
        isinstance(schedule, NoiseSchedule),
        f"{who} has schedule {schedule!r}, expected a gdmd.interfaces.NoiseSchedule "
        "(e.g. gdmd.schedules.FlowMatchingSchedule)",
    )
    check(
        getattr(schedule, "prediction_type", None) in _PREDICTION_TYPES,
        f"{who} has a schedule with prediction_type "
        f"{getattr(schedule, 'prediction_type', None)!r}, expected one of "
        f"{', '.join(_PREDICTION_TYPES)}",
    )
    shape = getattr(model, "sample_shape", None)
    check(
        isinstance(shape, tuple)
        and len(shape) >= 1
        and all(isinstance(n, int) and n > 0 for n in shape),
        f"{who} has sample_shape {shape!r}, expected a tuple of positive ints such as (3, 32, 32)",
    )
    decoder = getattr(model, "decoder", None)
    check(
        isinstance(decoder, Decoder),
        f"{who} has decoder {decoder!r}, expected an object with decode(latents) -> images",
    )
    assert isinstance(shape, tuple)
    return shape


def _check_conditioning(who: str, cond: Any, batch: int, device: torch.device) -> None:
    check(
        isinstance(cond, dict) and bool(cond),
        f"{who} returned {summary(cond)} from encode_prompts, expected a non-empty "
        "dict[str, Tensor]",
    )
    for key, value in cond.items():
        check(
            isinstance(value, torch.Tensor),
            f"{who} returned conditioning {key!r} of type {type(value).__name__}; every value "
            "must be a Tensor with the batch first",
        )
        check(
            value.ndim >= 1 and value.shape[0] == batch,
            f"{who} returned conditioning {key!r} of shape {list(value.shape)} for {batch} "
            f"prompts; every tensor must have the batch ({batch}) first",
        )
        check(
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
    who = describe(model, "model")
    prompts = batch_prompts(prompts, batch_size)
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
    check(torch.equal(x_t, original), f"{who} modified x_t in place in predict_x0")
    again = _model_call(who, partial(predict, x_t, t, cond), "predict_x0", expected, device)
    check(
        close(again, out, atol),
        f"{who} is not deterministic: predict_x0 on the same inputs (in eval mode) differed "
        f"by up to {max_difference(again, out):.3g} (atol {atol:g})",
    )
    called = _model_call(who, partial(model, x_t, t, cond), "model(x_t, t, cond)", expected, device)
    check(
        close(called, out, atol),
        f"{who}: calling the model and predict_x0 differ by up to "
        f"{max_difference(called, out):.3g}; forward must be predict_x0 (accelerate wraps "
        "forward)",
    )
    what = "predict_x0 with guidance_scale=1.0"
    one = _model_call(who, partial(predict, x_t, t, cond, 1.0), what, expected, device)
    check(
        close(one, out, atol),
        f"{who}: guidance_scale=1.0 and guidance_scale=None differ by up to "
        f"{max_difference(one, out):.3g}; both mean no guidance",
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
            check(
                close(alone, batched[i : i + 1], atol),
                f"{who} predicts sample {i} differently alone and in a batch of "
                f"{x_t.shape[0]} (guidance_scale={scale}), by up to "
                f"{max_difference(alone, batched[i : i + 1]):.3g} (atol {atol:g})",
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
    check(
        isinstance(back, torch.Tensor) and close(back.float(), x0.float(), 1e-3),
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
    check(
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
    check(
        bool(present) and any(bool(g.abs().sum() > 0) for g in present),
        f"{who}: no gradient reaches trainable_parameters() from predict_x0",
    )
    check(
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
        check(
            isinstance(images, torch.Tensor)
            and images.ndim == 4
            and images.shape[0] == x_t.shape[0]
            and images.shape[1] == 3
            and images.is_floating_point(),
            f"{who}'s decoder returned {summary(images)}, expected float images [B, 3, H, W]",
        )
        low, high = float(images.detach().min()), float(images.detach().max())
        check(
            low >= -1e-4 and high <= 1 + 1e-4,
            f"{who}'s decoder returned values in [{low:.3g}, {high:.3g}], expected [0, 1]",
        )
        check(
            images.requires_grad,
            f"{who}'s decoder is not differentiable (the dmdr target back-propagates through it)",
        )
        (grad,) = torch.autograd.grad(images.sum(), latents, allow_unused=True)
    check(
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
        check(
            any(Path(directory).iterdir()),
            f"{who}: save_pretrained wrote nothing into the directory it was given",
        )
