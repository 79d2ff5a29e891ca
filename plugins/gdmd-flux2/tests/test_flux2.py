"""The ``flux2`` family on a tiny random FLUX.2 [klein] pipeline, against diffusers' own
``Flux2KleinPipeline``: prompt embeddings, packing, the x0-prediction as one scheduler step,
CFG, the shift, sampling and decoding; the model contract; saving and loading; errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from flux2_tiny import RESOLUTION, TOKENS

from gdmd.interfaces import BuildContext
from gdmd.manager import build_plugin_manager
from gdmd.schedules import FlowMatchingSchedule
from gdmd.testing import assert_model_contract

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline  # noqa: E402
from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu  # noqa: E402

from gdmd_flux2.config import Flux2Config  # noqa: E402
from gdmd_flux2.loading import build_flux2  # noqa: E402
from gdmd_flux2.model import Flux2Model  # noqa: E402
from gdmd_flux2.parts import (  # noqa: E402
    Flux2ConfigError,
    Flux2LoadError,
    empirical_mu,
    image_ids,
    pack,
    patchify,
    pipeline_shift,
    unpack,
    unpatchify,
)

PROMPTS = ["a red cat", "two blue dogs"]


def _ctx(**components: Any) -> BuildContext:
    return BuildContext(
        device=torch.device("cpu"),
        dtype=torch.float32,
        generator=torch.Generator().manual_seed(1),
        components=components,
    )


def _config(**fields: Any) -> Flux2Config:
    fields.setdefault("max_sequence_length", TOKENS)
    fields.setdefault("resolution", RESOLUTION)
    return Flux2Config(**fields)


@pytest.fixture(scope="module")
def pipe(flux2_pipeline_dir: Path) -> Any:
    return Flux2KleinPipeline.from_pretrained(flux2_pipeline_dir)


@pytest.fixture(scope="module")
def teacher(flux2_pipeline_dir: Path) -> Flux2Model:
    return build_flux2(_config(model=str(flux2_pipeline_dir)), _ctx(role="teacher"))


@pytest.fixture(scope="module")
def student(teacher: Flux2Model) -> Flux2Model:
    """A LoRA student whose adapter is non-zero (B drawn too), so it differs from the teacher."""
    model = build_flux2(
        _config(lora_rank=4, lora_alpha=8.0), _ctx(role="student", init_from=teacher)
    )
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in model.trainable_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


def _noisy(batch: int, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x_t = torch.randn(batch, 16, 4, 4, generator=generator)
    t = torch.rand(batch, generator=generator) * 0.8 + 0.1
    return x_t, t


def _pipeline_velocity(pipe: Any, x_t: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor):
    """The velocity exactly as the pipeline's denoising loop asks its transformer for it."""
    latents = pipe._pack_latents(x_t)
    latent_ids = pipe._prepare_latent_ids(x_t)
    text_ids = pipe._prepare_text_ids(embeds)
    scheduler_timestep = t * 1000
    velocity = pipe.transformer(
        hidden_states=latents,
        timestep=scheduler_timestep / 1000,
        guidance=None,
        encoder_hidden_states=embeds,
        txt_ids=text_ids,
        img_ids=latent_ids,
        return_dict=False,
    )[0]
    return velocity, latents, latent_ids


def _to_zero(velocity: torch.Tensor, latents: torch.Tensor, t: float) -> torch.Tensor:
    """One step of the pipeline's Euler scheduler from flow time ``t`` to 0."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    scheduler.set_timesteps(sigmas=[t])
    return scheduler.step(velocity, scheduler.timesteps[0], latents, return_dict=False)[0]


# -- conventions against the pipeline --------------------------------------------------------


def test_prompt_embeddings_are_the_pipelines(pipe: Any, teacher: Flux2Model) -> None:
    ours = teacher.encode_prompts(PROMPTS)
    theirs, _ = pipe.encode_prompt(PROMPTS, max_sequence_length=TOKENS)
    assert set(ours) == {"prompt_embeds"}
    assert ours["prompt_embeds"].shape == (2, TOKENS, 48)
    torch.testing.assert_close(ours["prompt_embeds"], theirs, rtol=0, atol=0)


def test_packing_and_position_ids_are_the_pipelines(pipe: Any) -> None:
    latents = torch.randn(2, 4, 8, 6)
    patched = patchify(latents)
    assert torch.equal(patched, pipe._patchify_latents(latents))
    assert torch.equal(unpatchify(patched), latents)
    assert torch.equal(pack(patched), pipe._pack_latents(patched))
    assert torch.equal(unpack(pack(patched), 4, 3), patched)
    assert torch.equal(image_ids(4, 3, torch.device("cpu")), pipe._prepare_latent_ids(patched)[0])
    ids = pipe._prepare_latent_ids(patched)
    assert torch.equal(pipe._unpack_latents_with_ids(pack(patched), ids, 4, 3), patched)


def test_x0_is_one_scheduler_step_to_zero(pipe: Any, teacher: Flux2Model) -> None:
    embeds = teacher.encode_prompts(PROMPTS)["prompt_embeds"]
    x_t, t = _noisy(2)
    with torch.no_grad():
        ours = teacher.predict_x0(x_t, t, {"prompt_embeds": embeds})
        for i in range(2):
            velocity, latents, ids = _pipeline_velocity(pipe, x_t[i : i + 1], t[i : i + 1],
                                                        embeds[i : i + 1])
            x0 = _to_zero(velocity, latents, float(t[i]))
            theirs = pipe._unpack_latents_with_ids(x0, ids, 4, 4)
            torch.testing.assert_close(ours[i : i + 1], theirs, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, x_t)  # the prediction is not the input


def test_guidance_is_the_pipelines(pipe: Any, teacher: Flux2Model) -> None:
    embeds = teacher.encode_prompts(PROMPTS)["prompt_embeds"]
    negative, _ = pipe.encode_prompt([""] * 2, max_sequence_length=TOKENS)
    x_t, t = _noisy(2, seed=4)
    scale = 3.5
    with torch.no_grad():
        ours = teacher.predict_x0(x_t, t, {"prompt_embeds": embeds}, guidance_scale=scale)
        plain = teacher.predict_x0(x_t, t, {"prompt_embeds": embeds})
        for i in range(2):
            rows = slice(i, i + 1)
            cond, latents, ids = _pipeline_velocity(pipe, x_t[rows], t[rows], embeds[rows])
            uncond, _, _ = _pipeline_velocity(pipe, x_t[rows], t[rows], negative[rows])
            velocity = uncond + scale * (cond - uncond)  # the pipeline's mix
            x0 = _to_zero(velocity, latents, float(t[i]))
            theirs = pipe._unpack_latents_with_ids(x0, ids, 4, 4)
            torch.testing.assert_close(ours[rows], theirs, rtol=1e-5, atol=1e-5)
    assert (ours - plain).abs().max() > 1e-3


def test_sampling_and_decoding_are_the_pipelines(
    flux2_pipeline_dir: Path, teacher: Flux2Model
) -> None:
    """Two deterministic Euler steps with CFG, then the VAE: latents in, the pipeline's image
    out (its own prompt encoding, packing, scheduler, un-normalisation and decoding)."""
    sigmas, scale = [1.0, 0.6], 2.5
    noise = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(9))
    # Plain Euler at the given sigmas (no shift), so both sides step at the same times.
    pipe = Flux2KleinPipeline.from_pretrained(
        flux2_pipeline_dir, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0)
    )
    with torch.no_grad():
        theirs = pipe(
            prompt=PROMPTS[0],
            latents=noise,
            sigmas=sigmas,
            num_inference_steps=len(sigmas),
            guidance_scale=scale,
            height=RESOLUTION,
            width=RESOLUTION,
            max_sequence_length=TOKENS,
            output_type="pt",
        ).images
        cond = teacher.encode_prompts(PROMPTS[:1])
        x = noise
        for now, after in zip(sigmas, [*sigmas[1:], 0.0], strict=True):
            t = torch.tensor([now])
            x0 = teacher.predict_x0(x, t, cond, guidance_scale=scale)
            x = x + (after - now) * (x - x0) / now  # Euler along v = (x_t - x0) / t
        ours = teacher.decoder.decode(x)
    assert ours.shape == theirs.shape == (1, 3, RESOLUTION, RESOLUTION)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_shift_is_the_schedulers_at_the_resolution(pipe: Any, teacher: Flux2Model) -> None:
    for tokens in (16, 1024, 4096, 6000):
        for steps in (4, 28, 50):
            assert empirical_mu(tokens, steps) == pytest.approx(
                compute_empirical_mu(tokens, steps), rel=1e-12
            )
    tokens = (RESOLUTION // 4) ** 2
    mu = compute_empirical_mu(tokens, 50)
    assert teacher.schedule.shift == pytest.approx(math.exp(mu))
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    times = [1.0, 0.8, 0.5, 0.2]
    scheduler.set_timesteps(sigmas=times, mu=mu)
    shifted = FlowMatchingSchedule(teacher.schedule.shift).shift_time(torch.tensor(times))
    torch.testing.assert_close(scheduler.sigmas[:-1], shifted, rtol=1e-5, atol=1e-6)
    fixed = dict(pipe.scheduler.config, use_dynamic_shifting=False, shift=3.0)
    assert pipeline_shift(fixed, tokens, 50) == 3.0
    linear = dict(pipe.scheduler.config, time_shift_type="linear")
    assert pipeline_shift(linear, tokens, 50) == pytest.approx(mu)


# -- the gdmd contract, roles, persistence ---------------------------------------------------


def test_model_contract(teacher: Flux2Model, student: Flux2Model) -> None:
    assert teacher.sample_shape == (16, 4, 4)
    assert_model_contract(teacher, trainable=False, prompts=PROMPTS)
    assert_model_contract(student, prompts=PROMPTS)


def test_roles_share_the_frozen_parts_and_train_only_lora(
    teacher: Flux2Model, student: Flux2Model
) -> None:
    assert student.shared is teacher.shared
    assert student.transformer is not teacher.transformer
    assert list(teacher.trainable_parameters()) == []
    keys = set(student.state_dict())
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    assert {n for n, p in student.named_parameters() if p.requires_grad} == keys
    assert all(p.dtype == torch.float32 for p in student.trainable_parameters())
    x_t, t = _noisy(1)
    cond = teacher.encode_prompts(PROMPTS[:1])
    with torch.no_grad():
        assert (student(x_t, t, cond) - teacher(x_t, t, cond)).abs().max() > 1e-3


def test_fresh_lora_starts_at_the_teacher(teacher: Flux2Model) -> None:
    fresh = build_flux2(_config(lora_rank=2), _ctx(role="critic", init_from=teacher))
    x_t, t = _noisy(2)
    cond = teacher.encode_prompts(PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x_t, t, cond), teacher(x_t, t, cond))


def test_save_pretrained_round_trip(student: Flux2Model, tmp_path: Path) -> None:
    student.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "gdmd_flux2.json").read_text())
    assert saved["transformer"]["lora"] == {
        "rank": 4, "alpha": 8.0, "targets": list(student.lora.targets)  # type: ignore[union-attr]
    }
    loaded = build_flux2(Flux2Config(model=str(tmp_path / "saved")), _ctx(role="student"))
    assert loaded.resolution == student.resolution
    assert loaded.max_sequence_length == TOKENS
    assert loaded.schedule.shift == student.schedule.shift
    x_t, t = _noisy(2)
    cond = student.encode_prompts(PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x_t, t, cond), student(x_t, t, cond))


def test_registered_through_the_entry_point() -> None:
    entry = build_plugin_manager(load_entrypoints=True).registries.models.get("flux2")
    assert entry.distribution == "gdmd-flux2"
    assert entry.roles == ("teacher", "student", "critic")


# -- errors ----------------------------------------------------------------------------------


def test_missing_model_says_how_to_work_offline(tmp_path: Path) -> None:
    with pytest.raises(Flux2LoadError, match="HF_HUB_OFFLINE=1.*local directory"):
        build_flux2(_config(model=str(tmp_path / "nowhere" / "x y")), _ctx())


def test_other_pipeline_classes_are_refused(flux2_pipeline_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "flux2-dev"
    shutil.copytree(flux2_pipeline_dir, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "Flux2Pipeline"}))
    with pytest.raises(Flux2LoadError, match="Flux2Pipeline pipeline, not Flux2KleinPipeline"):
        build_flux2(_config(model=str(other)), _ctx())


def test_gated_repository_says_how_to_get_access() -> None:
    from huggingface_hub.errors import GatedRepoError

    from gdmd_flux2.loading import _hint
    from gdmd_flux2.parts import ModelRef

    class _Response:
        status_code = 403
        headers: dict[str, str] = {}
        url = "https://huggingface.co/black-forest-labs/FLUX.2-klein-base-9B"
        request = None

    err = OSError("cannot load")
    err.__cause__ = GatedRepoError("Access to model is restricted.", response=_Response())  # type: ignore[arg-type]
    hint = _hint(err, ModelRef("black-forest-labs/FLUX.2-klein-base-9B"))
    assert "accept the licence" in hint and "hf auth login" in hint and "local copy" in hint


def test_role_and_distillation_errors(flux2_pipeline_dir: Path, teacher: Flux2Model) -> None:
    with pytest.raises(Flux2ConfigError, match="lora_rank is set for the teacher"):
        build_flux2(_config(model=str(flux2_pipeline_dir), lora_rank=2), _ctx(role="teacher"))
    with pytest.raises(Flux2ConfigError, match="multiple of 2 \\* vae_scale_factor = 4"):
        build_flux2(_config(resolution=18), _ctx(role="student", init_from=teacher))
    with pytest.raises(Flux2ConfigError, match="lora_targets entry 'nope'"):
        build_flux2(
            _config(lora_rank=2, lora_targets=("nope",)), _ctx(role="critic", init_from=teacher)
        )
    distilled = build_flux2(_config(), _ctx(role="student", init_from=teacher))
    distilled.shared = type(teacher.shared)(**{**vars(teacher.shared), "is_distilled": True})
    x_t, t = _noisy(1)
    cond = teacher.encode_prompts(PROMPTS[:1])
    with pytest.raises(Flux2ConfigError, match="step-distilled"):
        distilled.predict_x0(x_t, t, cond, guidance_scale=4.0)
