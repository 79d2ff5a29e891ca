"""The ``sd3`` model family on a tiny SD3 pipeline built in code (random weights, offline).

The pipeline is saved once per session to a temporary directory and loaded through
``build_sd3`` like a real one. Several tests check gdmd's conversions against diffusers'
own ``StableDiffusion3Pipeline`` loaded independently from the same directory.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before any hub import: a failed lookup must not wait on DNS

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffusers import StableDiffusion3Pipeline  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from safetensors import safe_open  # noqa: E402

from gdmd.interfaces import BuildContext, DiffusionModel  # noqa: E402
from gdmd.models.sd3 import (  # noqa: E402
    SD3Config,
    SD3ConfigError,
    SD3LoadError,
    SD3Model,
    build_sd3,
    export_pipeline,
)

from .conftest import T5_TOKENS  # noqa: E402

PROMPTS = ["a red cat", "two blue dogs"]


# ------------------------------------------------------------------------------ fixtures


def _ctx(role: str, init_from: SD3Model | None = None, seed: int = 0) -> BuildContext:
    components: dict[str, object] = {"role": role}
    if init_from is not None:
        components["init_from"] = init_from
    return BuildContext(
        device=torch.device("cpu"),
        dtype=torch.float32,
        generator=torch.Generator().manual_seed(seed),
        components=components,
    )


def _build(role: str, init_from: SD3Model | None = None, **options: Any) -> SD3Model:
    options.setdefault("max_sequence_length", T5_TOKENS)
    return build_sd3(SD3Config(**options), _ctx(role, init_from))


@pytest.fixture(scope="module")
def teacher(sd3_pipeline_dir: Path) -> SD3Model:
    return _build("teacher", model=str(sd3_pipeline_dir))


@pytest.fixture(scope="module")
def reference_pipe(sd3_pipeline_dir: Path) -> Any:
    """diffusers' own pipeline, loaded independently of gdmd from the same directory."""
    pipe: Any = StableDiffusion3Pipeline.from_pretrained(sd3_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def _perturb(params: object, seed: int = 2) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:  # type: ignore[attr-defined]
            p.add_(0.05 * torch.randn(p.shape, generator=generator))


def _x0(model: SD3Model, guidance_scale: float | None = None) -> torch.Tensor:
    cond = model.encode_prompts(PROMPTS)
    with torch.no_grad():
        return model.predict_x0(_latents(), torch.tensor([0.9, 0.4]), cond, guidance_scale)


# ------------------------------------------------------------------------ loading, shapes


def test_teacher_loads_offline_and_is_frozen(teacher: SD3Model) -> None:
    assert isinstance(teacher, DiffusionModel)
    assert teacher.sample_shape == (4, 8, 8)  # sample_size 8 x VAE factor 2 = 16 px
    assert teacher.resolution == 16
    assert teacher.schedule.shift == 3.0  # from the scheduler config
    assert list(teacher.trainable_parameters()) == []
    assert not teacher.training


def test_encode_prompts_matches_the_pipeline(teacher: SD3Model, reference_pipe: Any) -> None:
    cond = teacher.encode_prompts(PROMPTS)
    assert cond["prompt_embeds"].shape == (2, 77 + T5_TOKENS, 16)
    assert cond["pooled_prompt_embeds"].shape == (2, 16)
    embeds, _, pooled, _ = reference_pipe.encode_prompt(
        PROMPTS, None, None, do_classifier_free_guidance=False, max_sequence_length=T5_TOKENS
    )
    torch.testing.assert_close(cond["prompt_embeds"], embeds)
    torch.testing.assert_close(cond["pooled_prompt_embeds"], pooled)


def test_predict_x0_shape_and_guidance(teacher: SD3Model) -> None:
    plain = _x0(teacher)
    assert plain.shape == (2, *teacher.sample_shape)
    torch.testing.assert_close(_x0(teacher, guidance_scale=1.0), plain, rtol=0, atol=0)
    uncond = teacher.encode_prompts(["", ""])
    with torch.no_grad():
        x0_uncond = teacher.predict_x0(_latents(), torch.tensor([0.9, 0.4]), uncond)
    expected = x0_uncond + 4.0 * (plain - x0_uncond)
    torch.testing.assert_close(_x0(teacher, guidance_scale=4.0), expected, rtol=1e-5, atol=1e-5)


def test_x0_and_decode_match_diffusers_euler_step_with_cfg(
    teacher: SD3Model, reference_pipe: Any
) -> None:
    # One Euler step from sigma to 0 lands on x_t - sigma * v, i.e. the pipeline's own
    # x0-prediction: this pins timestep = t * 1000, v = noise - x0 and the CFG batching.
    latents = _latents()
    run = dict(
        prompt=PROMPTS,
        sigmas=[0.6],
        guidance_scale=4.0,
        latents=latents,
        height=16,
        width=16,
        max_sequence_length=T5_TOKENS,
    )
    latent_out = reference_pipe(**run, output_type="latent").images
    sigma = reference_pipe.scheduler.sigmas[0]  # 0.6 after the scheduler's shift of 3
    assert sigma == pytest.approx(3 * 0.6 / (1 + 2 * 0.6))
    cond = teacher.encode_prompts(PROMPTS)
    with torch.no_grad():
        x0 = teacher.predict_x0(latents, sigma.expand(2), cond, guidance_scale=4.0)
        images = teacher.decoder.decode(x0)
    torch.testing.assert_close(x0, latent_out, rtol=1e-5, atol=1e-5)
    pipe_images = reference_pipe(**run, output_type="pt").images
    torch.testing.assert_close(images, pipe_images, rtol=1e-4, atol=1e-5)


def test_decode_range_shape_and_gradient(teacher: SD3Model) -> None:
    latents = (3 * _latents()).requires_grad_(True)
    images = teacher.decoder.decode(latents)
    assert images.shape == (2, 3, 16, 16)
    assert images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    images.mean().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0


# ------------------------------------------------------------------------- roles, sharing


def test_student_shares_frozen_parts_and_copies_the_transformer(teacher: SD3Model) -> None:
    student = _build("student", init_from=teacher)
    assert student.shared is teacher.shared
    assert student.shared.text_encoder is teacher.shared.text_encoder
    assert student.decoder.vae is teacher.shared.vae
    assert student.transformer is not teacher.transformer
    teacher_storage = {p.data_ptr() for p in teacher.transformer.parameters()}
    assert not teacher_storage & {p.data_ptr() for p in student.transformer.parameters()}
    torch.testing.assert_close(_x0(student), _x0(teacher), rtol=0, atol=0)
    trainable = list(student.trainable_parameters())
    assert len(trainable) == len(list(student.transformer.parameters()))
    assert all(key.startswith("transformer.") for key in student.state_dict())

    critic = copy.deepcopy(student)
    assert critic.shared is student.shared and critic.decoder is student.decoder
    assert critic.transformer is not student.transformer


def _lora_layers(model: SD3Model) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.transformer.modules() if isinstance(m, LoraLayer)]


def test_lora_trains_only_adapters_starts_at_base_and_gets_gradients(teacher: SD3Model) -> None:
    student = _build("student", init_from=teacher, lora_rank=4, lora_alpha=8.0, share_base=False)
    wrapped = _lora_layers(student)
    # One joint block, the last: it has no to_add_out, and its text queries (add_q_proj)
    # feed only discarded text outputs, so they get no adapter.
    assert len(wrapped) == 6
    assert not any(
        n.endswith("add_q_proj") for n, m in student.transformer.named_modules() if m in wrapped
    )
    assert student.transformer.peft_config["student"].lora_alpha == 8.0
    trainable = list(student.trainable_parameters())
    assert len(trainable) == 2 * len(wrapped)
    assert all(p.dtype == torch.float32 for p in trainable)
    torch.testing.assert_close(_x0(student), _x0(teacher), rtol=0, atol=0)

    cond = student.encode_prompts(PROMPTS)
    loss = student(_latents(), torch.tensor([0.9, 0.4]), cond, guidance_scale=3.0).square().mean()
    loss.backward()
    grads = [m.lora_B["student"].weight.grad for m in wrapped]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)  # every adapter is used
    assert all(p.grad is None for p in student.parameters() if not p.requires_grad)
    torch.optim.SGD(trainable, lr=0.1).step()
    assert not torch.equal(_x0(student), _x0(teacher))

    state = student.state_dict()
    assert state and all(".lora_A.student." in k or ".lora_B.student." in k for k in state)
    fresh = _build("student", init_from=teacher, lora_rank=4, lora_alpha=8.0, share_base=False)
    fresh.load_state_dict(state)  # strict: frozen base weights are not expected
    torch.testing.assert_close(_x0(fresh), _x0(student), rtol=0, atol=0)


def test_lora_is_seeded_and_float32_over_a_bfloat16_base(teacher: SD3Model) -> None:
    first = _build("critic", init_from=teacher, lora_rank=2, dtype="bfloat16")
    second = _build("critic", init_from=teacher, lora_rank=2, dtype="bfloat16")
    assert first.transformer.dtype == torch.bfloat16
    for a, b in zip(first.trainable_parameters(), second.trainable_parameters(), strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # drawn from the context's generator
    x0 = _x0(first)
    assert x0.dtype == torch.float32  # the input's dtype, whatever the transformer's
    torch.testing.assert_close(x0, _x0(teacher), rtol=0.05, atol=0.05)


def test_lora_init_is_seeded_by_the_context_and_leaves_the_global_rng_alone(
    teacher: SD3Model,
) -> None:
    before = torch.random.get_rng_state()
    first = _build("critic", init_from=teacher, lora_rank=2, share_base=False)
    assert torch.equal(torch.random.get_rng_state(), before)  # peft's init drew nothing
    other = build_sd3(
        SD3Config(lora_rank=2, max_sequence_length=T5_TOKENS, share_base=False),
        _ctx("critic", teacher, seed=1),
    )
    lora_a = [p for n, p in first.named_parameters() if ".lora_A." in n]
    assert lora_a and all(p.abs().sum() > 0 for p in lora_a)  # gaussian A, zero B
    assert all(p.abs().sum() == 0 for n, p in first.named_parameters() if ".lora_B." in n)
    assert all(p.std() < 1.0 for p in lora_a)  # N(0, 1/r^2) with r = 2
    other_a = [p for n, p in other.named_parameters() if ".lora_A." in n]
    assert not any(torch.equal(a, b) for a, b in zip(lora_a, other_a, strict=True))


# ------------------------------------------------------------------------ shared frozen base


def _roles(sd3_pipeline_dir: Path, share: bool, **options: Any) -> tuple[SD3Model, ...]:
    """A fresh teacher, and a student and a critic built from it in one layout."""
    teacher = _build("teacher", model=str(sd3_pipeline_dir))
    student = _build(
        "student", init_from=teacher, lora_rank=4, lora_alpha=8.0, share_base=share, **options
    )
    critic = _build("critic", init_from=teacher, lora_rank=2, share_base=share, **options)
    for seed, model in ((5, student), (6, critic)):
        _perturb(model.trainable_parameters(), seed=seed)
    return teacher, student, critic


def _parameter_bytes(*models: SD3Model) -> int:
    storages = {}
    for model in models:
        for p in model.parameters():
            storages[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
    return sum(storages.values())


def test_shared_base_is_exact_and_holds_one_transformer(sd3_pipeline_dir: Path) -> None:
    shared = _roles(sd3_pipeline_dir, share=True)
    copied = _roles(sd3_pipeline_dir, share=False)
    teacher, student, critic = shared
    assert student.transformer is teacher.transformer is critic.transformer
    assert all(m.shares_base for m in shared)
    assert not any(m.shares_base for m in copied)
    # Each role sees only its own weights: the teacher no adapter, the others only theirs.
    assert not any(".lora_" in n for n, _ in teacher.named_parameters())
    for model, other in ((student, "critic"), (critic, "student")):
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert names and all(f".{model.adapter}." in n for n in names)
        assert not any(f".{other}." in n for n, _ in model.named_parameters())
    for a, b in zip(shared[1:], copied[1:], strict=True):
        assert list(a.state_dict()) == list(b.state_dict())  # checkpoints fit either layout
    # One transformer instead of three, plus the two adapters.
    base = _parameter_bytes(copied[0])
    adapters = sum(p.nbytes for m in shared[1:] for p in m.trainable_parameters())
    assert _parameter_bytes(*shared) == base + adapters
    assert _parameter_bytes(*copied) == 3 * base + adapters

    # Exact: every role, with the adapters switched in an interleaved order, and gradients.
    cond = teacher.encode_prompts(PROMPTS)
    t = torch.tensor([0.9, 0.4])
    grads = []
    for teacher_, student_, critic_ in (shared, copied):
        out = student_(_latents(), t, cond, guidance_scale=2.0)
        with torch.no_grad():
            real = teacher_(_latents(seed=3), t, cond, guidance_scale=4.0)
            fake = critic_(_latents(seed=3), t, cond)
        out.square().mean().backward()
        loss = critic_(_latents(seed=4), t, cond).square().mean()
        loss.backward()
        grads.append(
            (
                out,
                real,
                fake,
                [p.grad for m in (student_, critic_) for p in m.trainable_parameters()],
            )
        )
    (out_s, real_s, fake_s, grads_s), (out_c, real_c, fake_c, grads_c) = grads
    for a, b in (
        (out_s, out_c),
        (real_s, real_c),
        (fake_s, fake_c),
        *zip(grads_s, grads_c, strict=True),
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    fresh = _build("teacher", model=str(sd3_pipeline_dir))
    torch.testing.assert_close(_x0(teacher, 4.0), _x0(fresh, 4.0), rtol=0, atol=0)


def test_shared_base_keeps_optimised_weights_trainable_across_switches(
    sd3_pipeline_dir: Path,
) -> None:
    teacher, student, critic = _roles(sd3_pipeline_dir, share=True)
    trained = [*student.trainable_parameters(), *critic.trainable_parameters()]
    cond = teacher.encode_prompts(PROMPTS)
    for model in (student, teacher, critic, teacher, student):
        with torch.no_grad():
            model(_latents(), torch.tensor([0.5, 0.5]), cond)
        # peft's set_adapter/disable_adapters would have frozen the inactive adapters.
        assert all(p.requires_grad for p in trained)
    teacher.requires_grad_(False)  # what the loop does: must not reach the adapters
    assert all(p.requires_grad for p in trained)


def test_shared_student_with_gradient_checkpointing_gets_its_own_gradients(
    sd3_pipeline_dir: Path,
) -> None:
    # Backward recomputes checkpointed blocks; by then the critic's adapter is active.
    runs = []
    for share in (True, False):
        teacher, student, critic = _roles(sd3_pipeline_dir, share, gradient_checkpointing=True)
        cond = teacher.encode_prompts(PROMPTS)
        out = student(_latents(), torch.tensor([0.9, 0.4]), cond)
        with torch.no_grad():
            critic(_latents(seed=3), torch.tensor([0.9, 0.4]), cond)
        out.square().mean().backward()
        runs.append([p.grad for p in student.trainable_parameters()])
    assert all(g is not None for g in runs[0])
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_share_base_true_says_why_it_cannot(teacher: SD3Model) -> None:
    with pytest.raises(SD3ConfigError, match="no lora_rank"):
        _build("student", init_from=teacher, share_base=True)
    with pytest.raises(SD3ConfigError, match="dtype bfloat16 differs"):
        _build("critic", init_from=teacher, lora_rank=2, dtype="bfloat16", share_base=True)
    full = _build("student", init_from=teacher)
    with pytest.raises(SD3ConfigError, match="not a frozen teacher"):
        _build("critic", init_from=full, lora_rank=2, share_base=True)
    # Unset: share when possible, copy otherwise.
    assert _build("critic", init_from=teacher, lora_rank=2).shares_base
    assert not _build("critic", init_from=teacher, lora_rank=2, dtype="bfloat16").shares_base


def test_gradient_checkpointing_keeps_gradients(teacher: SD3Model) -> None:
    student = _build("critic", init_from=teacher, lora_rank=2, gradient_checkpointing=True)
    assert student.transformer.gradient_checkpointing
    cond = student.encode_prompts(PROMPTS)
    student(_latents(), torch.tensor([0.5, 0.5]), cond).square().mean().backward()
    assert all(p.grad is not None for p in student.trainable_parameters())


# ------------------------------------------------------------------------ save, export


def test_full_save_reload_round_trip(teacher: SD3Model, tmp_path: Path) -> None:
    student = _build("student", init_from=teacher)
    _perturb(student.transformer.parameters())
    student.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    reloaded = _build("teacher", model=str(tmp_path / "saved"))
    assert reloaded.shared.pipeline == teacher.shared.pipeline
    assert reloaded.schedule.shift == student.schedule.shift
    torch.testing.assert_close(_x0(reloaded, 3.0), _x0(student, 3.0), rtol=0, atol=0)

    # A save directory (say, a checkpoint) may be deleted later, so a LoRA model built on a
    # reloaded one writes its base out instead of referring to that directory.
    _build("critic", init_from=reloaded, lora_rank=2).save_pretrained(tmp_path / "critic")
    assert (tmp_path / "critic" / "base_transformer").is_dir()


def test_lora_save_reload_round_trip(teacher: SD3Model, tmp_path: Path) -> None:
    student = _build("student", init_from=teacher, lora_rank=4)
    _perturb(student.trainable_parameters())
    student.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "gdmd_sd3.json").read_text())["transformer"]["lora"]["rank"] == 4
    with safe_open(str(tmp_path / "pytorch_lora_weights.safetensors"), "pt") as f:
        keys = list(f.keys())
        lora_config = json.loads(f.metadata()["lora_adapter_metadata"])
    # diffusers' LoRA format: transformer.<peft key>, the adapter name stripped.
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in keys
    assert len(keys) == 2 * len(_lora_layers(student))
    assert lora_config["transformer.r"] == 4 and lora_config["transformer.lora_alpha"] == 4
    assert not (tmp_path / "transformer").exists()  # the base is a reference, not a copy
    reloaded = _build("student", model=str(tmp_path))
    assert reloaded.lora == student.lora
    assert len(list(reloaded.trainable_parameters())) == len(list(student.trainable_parameters()))
    torch.testing.assert_close(_x0(reloaded), _x0(student), rtol=0, atol=0)
    reloaded.save_pretrained(tmp_path / "again")  # the base is still the pipeline's
    assert not (tmp_path / "again" / "base_transformer").exists()


def test_lora_on_a_trained_base_saves_that_base(teacher: SD3Model, tmp_path: Path) -> None:
    trained = _build("student", init_from=teacher)
    _perturb(trained.transformer.parameters())
    critic = _build("critic", init_from=trained, lora_rank=2)
    _perturb(critic.trainable_parameters(), seed=3)
    critic.save_pretrained(tmp_path)
    assert (tmp_path / "base_transformer").is_dir()
    reloaded = _build("critic", model=str(tmp_path))
    torch.testing.assert_close(_x0(reloaded), _x0(critic), rtol=0, atol=0)


def test_exported_pipeline_loads_and_generates(teacher: SD3Model, tmp_path: Path) -> None:
    student = _build("student", init_from=teacher, lora_rank=4)
    _perturb(student.trainable_parameters())
    export_pipeline(student, tmp_path, student_timesteps=[1.0, 0.5])
    pipe: Any = StableDiffusion3Pipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    assert not any("lora" in name for name, _ in pipe.transformer.named_parameters())
    assert pipe.scheduler.config.stochastic_sampling
    assert json.loads((tmp_path / "gdmd_export.json").read_text())["timesteps"] == [1.0, 0.5]

    latents = _latents()
    one_step = pipe(
        PROMPTS,
        sigmas=[1.0],
        guidance_scale=1.0,
        latents=latents,
        height=16,
        width=16,
        max_sequence_length=T5_TOKENS,
        output_type="latent",
    ).images
    cond = student.encode_prompts(PROMPTS)
    with torch.no_grad():
        x0 = student.predict_x0(latents, torch.ones(2), cond)
    torch.testing.assert_close(one_step, x0, rtol=1e-5, atol=1e-5)  # LoRA merged faithfully

    images = pipe(
        PROMPTS,
        sigmas=[1.0, 0.5],
        guidance_scale=1.0,
        height=16,
        width=16,
        max_sequence_length=T5_TOKENS,
        output_type="np",
    ).images
    assert images.shape == (2, 16, 16, 3)


def test_without_t5_embeds_are_zero_and_export_loads(
    sd3_pipeline_dir: Path, tmp_path: Path
) -> None:
    model = _build("teacher", model=str(sd3_pipeline_dir), drop_t5=True)
    assert model.shared.text_encoder_3 is None
    embeds = model.encode_prompts(PROMPTS)["prompt_embeds"]
    assert embeds.shape == (2, 77 + T5_TOKENS, 16)
    assert torch.count_nonzero(embeds[:, 77:]) == 0
    export_pipeline(model, tmp_path)
    notes = json.loads((tmp_path / "gdmd_export.json").read_text())
    assert notes["without_t5"] and "text_encoder_3=None" in notes["load"]
    # diffusers does not treat T5 as optional: a T5-less pipeline must say so when loading.
    pipe: Any = StableDiffusion3Pipeline.from_pretrained(
        tmp_path, text_encoder_3=None, tokenizer_3=None
    )
    assert pipe.text_encoder_3 is None
    assert pipe.scheduler.config.shift == 3.0


# -------------------------------------------------------------------------------- errors


def test_missing_local_path_gives_a_clear_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(SD3LoadError, match="HF_HUB_OFFLINE") as info:
        _build("teacher", model=missing)
    assert missing in str(info.value)
    with pytest.raises(SD3LoadError, match="no model_index.json"):
        _build("teacher", model=str(tmp_path))


def test_unreachable_hub_id_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SD3LoadError, match="HF_HUB_OFFLINE") as info:
        _build("teacher", model="gdmd-tests/not-a-real-sd3")
    assert "gdmd-tests/not-a-real-sd3" in str(info.value)


def test_option_mistakes_are_reported(teacher: SD3Model, sd3_pipeline_dir: Path) -> None:
    with pytest.raises(ValidationError, match="lora_rank"):
        SD3Config(lora_alpha=4.0)
    with pytest.raises(SD3ConfigError, match="teacher is frozen"):
        _build("teacher", model=str(sd3_pipeline_dir), lora_rank=4)
    with pytest.raises(SD3ConfigError, match="init_from"):
        _build("student", init_from=teacher, model="someone/other-sd3")
    with pytest.raises(SD3ConfigError, match="matches no module"):
        _build("student", init_from=teacher, lora_rank=2, lora_targets=["to_qq"])
    with pytest.raises(SD3ConfigError, match="multiple"):
        _build("student", init_from=teacher, resolution=18)
    with pytest.raises(SD3ConfigError, match="needs `model`"):
        _build("teacher")


def test_tensor_contract_errors(teacher: SD3Model) -> None:
    from gdmd.errors import ContractError

    cond = teacher.encode_prompts(PROMPTS)
    with pytest.raises(ContractError, match=r"x_t \[B, 4, h, w\]"):
        teacher.predict_x0(torch.zeros(2, 3, 8, 8), torch.ones(2), cond)
    with pytest.raises(ContractError, match="batch"):
        teacher.predict_x0(torch.zeros(3, 4, 8, 8), torch.ones(3), cond)
    with pytest.raises(ContractError, match="single string"):
        teacher.encode_prompts("a red cat")
