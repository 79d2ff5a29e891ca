"""The ``sdxl`` family against diffusers' own ``StableDiffusionXLPipeline`` on a tiny random
pipeline: time mapping, x0-prediction, CFG, conditioning, decoding, LoRA and persistence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionXLPipeline,
)
from sdxl_testkit import (
    LATENT_SIDE,
    save_tiny_sdxl_pipeline,
    sdxl_plugin_manager,
)

from gdmd.interfaces import BuildContext
from gdmd.testing import assert_model_contract
from gdmd_sdxl.common import SDXLConfigError, SDXLLoadError
from gdmd_sdxl.schedule import DiscreteDDPMSchedule

PROMPTS = ["a red cat", "two blue dogs!"]


def _ctx(role: str, init_from: Any = None) -> BuildContext:
    components: dict[str, Any] = {"role": role}
    if init_from is not None:
        components["init_from"] = init_from
    return BuildContext(
        device=torch.device("cpu"),
        dtype=torch.float32,
        generator=torch.Generator().manual_seed(0),
        components=components,
    )


def _build(pm: Any, options: dict[str, Any], role: str = "teacher", init_from: Any = None) -> Any:
    return pm.registries.models.get("sdxl").build(options, _ctx(role, init_from))


@pytest.fixture(scope="module")
def sdxl_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture
def sdxl_pm() -> Any:
    return sdxl_plugin_manager()


@pytest.fixture
def teacher(sdxl_pm: Any, sdxl_pipeline_dir: Path) -> Any:
    return _build(sdxl_pm, {"model": str(sdxl_pipeline_dir)})


@pytest.fixture
def pipe(sdxl_pipeline_dir: Path) -> Any:
    return StableDiffusionXLPipeline.from_pretrained(sdxl_pipeline_dir)


def _noise(seed: int = 1) -> torch.Tensor:
    shape = (len(PROMPTS), 4, LATENT_SIDE, LATENT_SIDE)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# -- time mapping --------------------------------------------------------------------------


def test_student_times_are_the_schedulers_own_timesteps(pipe: Any) -> None:
    schedule = DiscreteDDPMSchedule.from_scheduler_config(pipe.scheduler.config)
    table = pipe.scheduler.alphas_cumprod  # diffusers' float32 table
    times = torch.tensor([1.0, 0.75, 0.5, 0.25])
    assert schedule.timestep(times).tolist() == [999.0, 749.0, 499.0, 249.0]
    abar = schedule.alpha_bar(times.double())
    assert abar.tolist() == table[[999, 749, 499, 249]].double().tolist()  # bit for bit
    assert schedule.alpha_bar(torch.tensor([0.0])).item() == 1.0  # t = 0: clean data
    assert schedule.time_of(749).item() == 0.75
    # Between grid points abar is linear in the timestep.
    mid = schedule.alpha_bar(torch.tensor([0.7495], dtype=torch.float64)).item()
    assert mid == pytest.approx(0.5 * (table[748].item() + table[749].item()), rel=1e-6)


def test_epsilon_round_trip_and_training_target(pipe: Any) -> None:
    schedule = DiscreteDDPMSchedule.from_scheduler_config(pipe.scheduler.config)
    x0, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t = torch.tensor([0.75, 0.25])
    x_t = schedule.add_noise(x0, eps, t)
    assert torch.allclose(schedule.to_x0(x_t, t, eps), x0, atol=1e-5)
    assert torch.allclose(schedule.from_x0(x_t, t, x0), eps, atol=1e-4)
    assert torch.equal(schedule.training_target(x0, eps, t), eps)
    # add_noise is diffusers' own noising at the matching timesteps.
    ddpm = DDPMScheduler.from_config(pipe.scheduler.config)
    expected = ddpm.add_noise(x0, eps, torch.tensor([749, 249]))
    assert torch.allclose(x_t, expected, atol=1e-6)


# -- against the pipeline ---------------------------------------------------------------------


def test_conditioning_is_the_pipelines(teacher: Any, pipe: Any) -> None:
    cond = teacher.encode_prompts(PROMPTS)
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False)
    assert torch.equal(cond["prompt_embeds"], embeds)
    assert torch.equal(cond["pooled_prompt_embeds"], pooled)
    assert cond["prompt_embeds"].shape == (2, 77, 32)
    assert cond["pooled_prompt_embeds"].shape == (2, 8)
    time_ids = pipe._get_add_time_ids((16, 16), (0, 0), (16, 16), torch.float32, 8)
    assert torch.equal(cond["add_time_ids"], time_ids.expand(2, -1))


@pytest.mark.parametrize("timestep", [749, 499, 249])
def test_x0_prediction_is_one_scheduler_step_to_zero(
    teacher: Any, pipe: Any, timestep: int
) -> None:
    """DDPM's ``pred_original_sample`` of the UNet's epsilon, called as the pipeline calls it."""
    x_t = _noise()
    t = torch.full((2,), (timestep + 1) / 1000)
    cond = teacher.encode_prompts(PROMPTS)
    with torch.no_grad():
        ours = teacher.predict_x0(x_t, t, cond)
        eps = pipe.unet(
            x_t,
            torch.tensor(timestep),
            encoder_hidden_states=cond["prompt_embeds"],
            added_cond_kwargs={
                "text_embeds": cond["pooled_prompt_embeds"],
                "time_ids": cond["add_time_ids"],
            },
        ).sample
    ddpm = DDPMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    expected = ddpm.step(eps, timestep, x_t).pred_original_sample
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_one_pipeline_step_from_999_gives_the_guided_x0_and_its_image(
    teacher: Any, pipe: Any, guidance: float
) -> None:
    """A 1-step DDIM run of the pipeline (timestep 999 straight to clean: eta 0, final alpha 1)
    returns the x0-prediction with the pipeline's own CFG (zeros for the empty prompt), and
    its decoded image is the decoder's."""
    pipe.scheduler = DDIMScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False
    )
    noise = _noise(2)
    common = dict(num_inference_steps=1, guidance_scale=guidance, latents=noise.clone())
    with torch.no_grad():
        latents = pipe(PROMPTS, output_type="latent", **common).images
        images = pipe(PROMPTS, output_type="pt", **common).images
        cond = teacher.encode_prompts(PROMPTS)
        ours = teacher.predict_x0(noise, torch.ones(2), cond, guidance)
        decoded = teacher.decoder.decode(ours)
    assert torch.allclose(ours, latents, atol=1e-5), (ours - latents).abs().max()
    assert decoded.shape == images.shape == (2, 3, 16, 16)
    assert torch.allclose(decoded, images, atol=1e-5), (decoded - images).abs().max()


def test_guidance_mixes_the_conditional_and_zero_branches(teacher: Any) -> None:
    x_t, t = _noise(3), torch.tensor([0.75, 0.5])
    cond = teacher.encode_prompts(PROMPTS)
    zeros = {
        "prompt_embeds": torch.zeros_like(cond["prompt_embeds"]),
        "pooled_prompt_embeds": torch.zeros_like(cond["pooled_prompt_embeds"]),
        "add_time_ids": cond["add_time_ids"],
    }
    with torch.no_grad():
        c, u = teacher.predict_x0(x_t, t, cond), teacher.predict_x0(x_t, t, zeros)
        guided = teacher.predict_x0(x_t, t, cond, 4.0)
    assert torch.allclose(guided, u + 4.0 * (c - u), atol=1e-5)
    assert not torch.allclose(c, u, atol=1e-4)  # the prompt matters


# -- gdmd's contract, LoRA, persistence ------------------------------------------------------


def test_teacher_and_lora_student_keep_the_model_contract(sdxl_pm: Any, teacher: Any) -> None:
    assert_model_contract(teacher, trainable=False)
    student = _build(sdxl_pm, {"lora_rank": 4, "lora_alpha": 2.0}, "student", teacher)
    assert_model_contract(student)
    assert student.unet is not teacher.unet  # a copy per role
    assert student.shared is teacher.shared  # encoders and VAE shared
    keys = set(student.state_dict())
    assert keys and all(".lora_A.student." in k or ".lora_B.student." in k for k in keys)
    assert {id(p) for p in student.trainable_parameters()} == {
        id(p) for n, p in student.named_parameters() if "lora_" in n
    }
    assert not any(p.requires_grad for p in teacher.parameters())


def test_full_fine_tuning_trains_every_unet_weight(sdxl_pm: Any, teacher: Any) -> None:
    critic = _build(sdxl_pm, {}, "critic", teacher)
    assert_model_contract(critic)
    assert sum(1 for _ in critic.trainable_parameters()) == len(list(critic.unet.parameters()))


def test_lora_student_saves_and_loads_again(sdxl_pm: Any, teacher: Any, tmp_path: Path) -> None:
    student = _build(sdxl_pm, {"lora_rank": 4, "lora_alpha": 8.0}, "student", teacher)
    with torch.no_grad():
        for p in student.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    student.save_pretrained(tmp_path / "saved")
    loaded = _build(sdxl_pm, {"model": str(tmp_path / "saved")}, "student")
    assert loaded.lora == student.lora
    x_t, t = _noise(4), torch.tensor([1.0, 0.25])
    cond = student.encode_prompts(PROMPTS)
    with torch.no_grad():
        assert torch.allclose(loaded(x_t, t, cond), student(x_t, t, cond), atol=1e-5)
        assert not torch.allclose(student(x_t, t, cond), teacher(x_t, t, cond), atol=1e-4)


def test_fp16_fix_style_vae_option_replaces_the_pipelines_vae(
    sdxl_pm: Any, sdxl_pipeline_dir: Path, tmp_path: Path
) -> None:
    other = save_tiny_sdxl_pipeline(tmp_path / "other", scaling_factor=0.25, force_upcast=False)
    model = _build(
        sdxl_pm, {"model": str(sdxl_pipeline_dir), "vae": str(other / "vae"), "dtype": "float16"}
    )
    assert model.shared.vae.config.scaling_factor == 0.25
    assert model.shared.vae.dtype == torch.float16  # force_upcast false: stays float16
    plain = _build(sdxl_pm, {"model": str(sdxl_pipeline_dir), "dtype": "float16"})
    assert plain.shared.vae.dtype == torch.float32  # SDXL's own VAE asks for the upcast
    with pytest.raises(SDXLConfigError, match="vae = .* differs from the init_from"):
        _build(sdxl_pm, {"vae": str(other / "vae"), "lora_rank": 2}, "student", plain)


def test_user_errors_name_what_is_wrong(sdxl_pm: Any, teacher: Any, tmp_path: Path) -> None:
    with pytest.raises(SDXLLoadError, match="not found: no such directory.*HF_HUB_OFFLINE"):
        _build(sdxl_pm, {"model": str(tmp_path / "missing dir")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(SDXLLoadError, match="no model_index.json"):
        _build(sdxl_pm, {"model": str(tmp_path / "empty")})
    with pytest.raises(SDXLConfigError, match="teacher is frozen"):
        _build(sdxl_pm, {"model": "x/y", "lora_rank": 4})
    with pytest.raises(SDXLConfigError, match="'to_nothing' matches no module"):
        _build(sdxl_pm, {"lora_rank": 4, "lora_targets": ["to_nothing"]}, "student", teacher)
