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

from diffusers import (  # noqa: E402
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from pydantic import ValidationError  # noqa: E402
from transformers import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from gdmd.interfaces import BuildContext, DiffusionModel  # noqa: E402
from gdmd.models.sd3 import (  # noqa: E402
    LoRALinear,
    SD3Config,
    SD3ConfigError,
    SD3LoadError,
    SD3Model,
    build_sd3,
    export_pipeline,
)

T5_TOKENS = 16  # max_sequence_length used throughout: short prompts, fast T5
PROMPTS = ["a red cat", "two blue dogs"]


# ------------------------------------------------------------------------------ fixtures


def _byte_level_clip_tokenizer() -> CLIPTokenizer:
    """CLIP's BPE with no merges: the 256 byte symbols (plain and word-final) + 2 specials."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    extra = iter(range(256, 512))
    symbols = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _tiny_t5_tokenizer() -> T5Tokenizer:
    words = ["▁a", "▁red", "▁cat", "▁two", "▁blue", "▁dogs", "▁"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(w, -1.0) for w in words] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_TOKENS)


def _tiny_clip(tokenizer: CLIPTokenizer) -> CLIPTextModelWithProjection:
    eos = int(tokenizer.convert_tokens_to_ids("<|endoftext|>"))  # type: ignore[arg-type]
    return CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=8,
            bos_token_id=int(tokenizer.convert_tokens_to_ids("<|startoftext|>")),  # type: ignore[arg-type]
            eos_token_id=eos,  # pooling reads the hidden state at this id
            pad_token_id=eos,
        )
    )


@pytest.fixture(scope="session")
def sd3_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny SD3 pipeline: 16 px images, 4 x 8 x 8 latents, 1 joint block."""
    torch.manual_seed(0)
    clip_tokenizer = _byte_level_clip_tokenizer()
    pipe: Any = StableDiffusion3Pipeline(
        # caption_projection_dim = heads * head_dim; pooled = 8 + 8; joint = T5 d_model.
        transformer=SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=16,
            caption_projection_dim=16,
            pooled_projection_dim=16,
            pos_embed_max_size=16,
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        # A non-trivial scaling/shift so decode's un-normalisation is actually tested.
        vae=AutoencoderKL(
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
            block_out_channels=[8, 16],
            latent_channels=4,
            norm_num_groups=4,
            layers_per_block=1,
            sample_size=16,
            scaling_factor=1.5,
            shift_factor=0.1,
        ),
        text_encoder=_tiny_clip(clip_tokenizer),
        tokenizer=clip_tokenizer,
        text_encoder_2=_tiny_clip(clip_tokenizer),
        tokenizer_2=clip_tokenizer,
        text_encoder_3=T5EncoderModel(
            T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
        ),
        tokenizer_3=_tiny_t5_tokenizer(),
    )
    directory = tmp_path_factory.mktemp("tiny-sd3")
    pipe.save_pretrained(directory)
    return directory


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


def test_lora_trains_only_adapters_starts_at_base_and_gets_gradients(teacher: SD3Model) -> None:
    student = _build("student", init_from=teacher, lora_rank=4, lora_alpha=8.0)
    wrapped = [m for m in student.transformer.modules() if isinstance(m, LoRALinear)]
    m_add_q = student.transformer.get_submodule("transformer_blocks.0.attn.add_q_proj")
    assert len(wrapped) == 7  # one joint block; the last block has no to_add_out
    trainable = list(student.trainable_parameters())
    assert len(trainable) == 2 * len(wrapped)
    assert all(p.dtype == torch.float32 for p in trainable)
    torch.testing.assert_close(_x0(student), _x0(teacher), rtol=0, atol=0)

    cond = student.encode_prompts(PROMPTS)
    loss = student(_latents(), torch.tensor([0.9, 0.4]), cond, guidance_scale=3.0).square().mean()
    loss.backward()
    # The only block is the last one, whose text-stream outputs are discarded: its text
    # queries (add_q_proj) cannot affect the output, so their LoRA gets a zero gradient.
    grads = [m.lora_up.weight.grad for m in wrapped if m is not m_add_q]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in student.parameters() if not p.requires_grad)
    torch.optim.SGD(trainable, lr=0.1).step()
    assert not torch.equal(_x0(student), _x0(teacher))

    state = student.state_dict()
    assert state and all(".lora_down." in k or ".lora_up." in k for k in state)
    fresh = _build("student", init_from=teacher, lora_rank=4, lora_alpha=8.0)
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
    assert json.loads((tmp_path / "lora.json").read_text())["rank"] == 4
    assert (tmp_path / "lora.safetensors").is_file()
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
    assert not any(isinstance(m, LoRALinear) for m in pipe.transformer.modules())
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
