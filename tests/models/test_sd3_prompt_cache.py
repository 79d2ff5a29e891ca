"""The sd3 prompt cache and text-encoder placement on the tiny pipeline: a prompt is encoded
once, later encodes (and later runs) read the same tensors from disk, and with
``text_encoders = "none"`` the encoders are never loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from gdmd.interfaces import BuildContext

from .conftest import T5_TOKENS

pytest.importorskip("diffusers")

from gdmd.models.sd3 import SD3Config, SD3ConfigError, build_sd3  # noqa: E402
from gdmd.models.sd3.prompt_cache import PromptCacheError  # noqa: E402

PROMPTS = ["a red cat", "two blue dogs"]


def _build(pipeline: Path, role: str = "teacher", init_from: Any = None, **options: Any) -> Any:
    components: dict[str, Any] = {"role": role}
    if init_from is not None:
        components["init_from"] = init_from
    else:
        options.setdefault("model", str(pipeline))
    options.setdefault("max_sequence_length", T5_TOKENS)
    config = SD3Config(**options)
    ctx = BuildContext(
        device=torch.device("cpu"),
        dtype=torch.float32,
        generator=torch.Generator().manual_seed(0),
        components=components,
    )
    return build_sd3(config, ctx)


def _count_calls(model: Any) -> list[int]:
    """One counter per text encoder (CLIP, CLIP, T5), raised by each forward."""
    counts = [0, 0, 0]
    shared = model.shared
    encoders = (shared.text_encoder, shared.text_encoder_2, shared.text_encoder_3)
    for i, encoder in enumerate(encoders):

        def hook(*_: Any, i: int = i) -> None:
            counts[i] += 1

        encoder.register_forward_hook(hook)
    return counts


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() == {"prompt_embeds", "pooled_prompt_embeds"}
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_prompts_are_encoded_once_and_read_from_the_cache_after(
    sd3_pipeline_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    reference = _build(sd3_pipeline_dir)
    expected = reference.encode_prompts(PROMPTS)
    uncond = reference.shared.unconditional(77 + T5_TOKENS, 16)

    first = _build(sd3_pipeline_dir, prompt_cache=str(cache))
    calls = _count_calls(first)
    _same(first.encode_prompts(PROMPTS), expected)
    assert calls == [1, 1, 1]
    _same(first.encode_prompts(PROMPTS[::-1]), {k: v.flip(0) for k, v in expected.items()})
    _same(first.encode_prompts([PROMPTS[0], PROMPTS[0]]), {
        k: v[[0, 0]] for k, v in expected.items()
    })
    assert calls == [1, 1, 1]  # read back, never encoded again
    # The empty prompt of CFG goes through the cache too.
    _same(first.shared.unconditional(77 + T5_TOKENS, 16), uncond)
    assert calls == [2, 2, 2]
    shards = sorted((p.parent.name, p.name) for p in cache.glob("*/*.safetensors"))
    assert len(shards) == 2 and len({folder for folder, _ in shards}) == 1

    # A second run: the same student, built from the teacher, encodes nothing.
    second = _build(sd3_pipeline_dir, prompt_cache=str(cache))
    student = _build(sd3_pipeline_dir, "student", init_from=second, lora_rank=2)
    calls = _count_calls(second)
    _same(student.encode_prompts(PROMPTS), expected)
    assert calls == [0, 0, 0]

    # Another T5 length is another encoder identity: encoded afresh, in its own folder.
    longer = _build(sd3_pipeline_dir, prompt_cache=str(cache), max_sequence_length=T5_TOKENS + 4)
    calls = _count_calls(longer)
    assert longer.encode_prompts(PROMPTS)["prompt_embeds"].shape[1] == 77 + T5_TOKENS + 4
    assert calls == [1, 1, 1]
    assert len({p.parent for p in cache.glob("*/*.safetensors")}) == 2


def test_without_text_encoders_every_prompt_comes_from_the_cache(
    sd3_pipeline_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    filler = _build(sd3_pipeline_dir, prompt_cache=str(cache))
    expected = filler.encode_prompts(PROMPTS)
    filler.shared.unconditional(77 + T5_TOKENS, 16)

    bare = _build(sd3_pipeline_dir, prompt_cache=str(cache), text_encoders="none")
    shared = bare.shared
    assert shared.text_encoder is shared.text_encoder_2 is shared.text_encoder_3 is None
    _same(bare.encode_prompts(PROMPTS), expected)
    # CFG's empty prompt is cached, so the guided teacher runs without encoders.
    x_t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    guided = bare.predict_x0(x_t, torch.tensor([0.7, 0.3]), expected, guidance_scale=2.0)
    torch.testing.assert_close(
        guided, filler.predict_x0(x_t, torch.tensor([0.7, 0.3]), expected, guidance_scale=2.0)
    )
    with pytest.raises(PromptCacheError, match="'a green frog' is not in the prompt cache"):
        bare.encode_prompts(["a red cat", "a green frog"])
    # A merged export is a whole pipeline: the encoders come from the source pipeline.
    from diffusers import StableDiffusion3Pipeline

    from gdmd.models.sd3 import export_pipeline

    export_pipeline(bare, tmp_path / "merged")
    merged: Any = StableDiffusion3Pipeline.from_pretrained(tmp_path / "merged")
    embeds, _, pooled, _ = merged.encode_prompt(
        PROMPTS, None, None, do_classifier_free_guidance=False, max_sequence_length=T5_TOKENS
    )
    torch.testing.assert_close(embeds, expected["prompt_embeds"])
    torch.testing.assert_close(pooled, expected["pooled_prompt_embeds"])

    with pytest.raises(ValidationError, match='text_encoders = "none" needs prompt_cache'):
        SD3Config(model="m", text_encoders="none")
    with pytest.raises(ValidationError, match="does not exist"):
        SD3Config(model="m", text_encoders="none", prompt_cache=str(tmp_path / "nothing"))
    with pytest.raises(SD3ConfigError, match="leave text_encoders unset"):
        _build(sd3_pipeline_dir, "student", init_from=bare, text_encoders="device")


def test_offloaded_encoders_wait_on_the_cpu_and_run_on_the_device(
    sd3_pipeline_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU machine the device is the CPU, so stand-ins record where each encoder is."""
    model = _build(sd3_pipeline_dir, text_encoders="offload")
    shared = model.shared
    assert shared.offload and shared.has_encoders
    assert next(shared.text_encoder_3.parameters()).device.type == "cpu"

    class Encoder:
        def __init__(self) -> None:
            self.moves: list[str] = []

        def to(self, device: Any) -> Encoder:
            self.moves.append(str(device))
            return self

    encoders = [Encoder(), Encoder(), Encoder()]
    monkeypatch.setattr(shared, "text_encoder", encoders[0])
    monkeypatch.setattr(shared, "text_encoder_2", encoders[1])
    monkeypatch.setattr(shared, "text_encoder_3", encoders[2])
    monkeypatch.setattr(shared, "compute_device", torch.device("cuda:3"))
    during: list[list[str]] = []

    def encode(prompts: list[str], *_: Any) -> dict[str, Any]:
        during.extend(list(e.moves) for e in encoders)
        return {"prompts": prompts}

    monkeypatch.setattr(shared, "_encode", encode)
    assert shared.encode(PROMPTS, T5_TOKENS, 16) == {"prompts": PROMPTS}
    # Each encoder: on the device for the encode, back on the CPU after it.
    assert during == [["cuda:3"]] * 3
    assert [e.moves for e in encoders] == [["cuda:3", "cpu"]] * 3
