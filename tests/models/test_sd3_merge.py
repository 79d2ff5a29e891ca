"""A merged export adds the LoRA in float32 and rounds once to the run's dtype.

At a learning rate of 1e-6 a LoRA moves a weight by about one bfloat16 step, so where the merge
is rounded decides whether training survives the export. The case below is built so that the
delta is of that size: the float32 merge rounds ``W + s B A`` once (the nearest bfloat16 to the
true merged weight, element by element), a merge in bfloat16 (``W`` rounded first, then the
delta added, as fusing a LoRA into a bfloat16 pipeline does) rounds twice.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from gdmd.interfaces import BuildContext  # noqa: E402
from gdmd.models.sd3 import SD3Config, SD3Model, build_sd3, export_pipeline  # noqa: E402

from .conftest import T5_TOKENS  # noqa: E402

LAYER = "transformer_blocks.0.attn.to_q"


def _build(role: str, init_from: SD3Model | None = None, **options: Any) -> SD3Model:
    components: dict[str, Any] = {"role": role}
    if init_from is not None:
        components["init_from"] = init_from
    ctx = BuildContext(
        device=torch.device("cpu"),
        dtype=torch.float32,
        generator=torch.Generator().manual_seed(0),
        components=components,
    )
    return build_sd3(SD3Config(max_sequence_length=T5_TOKENS, **options), ctx)


@pytest.fixture(scope="module")
def student(sd3_pipeline_dir: Path) -> SD3Model:
    """A float32 student whose LoRA delta on ``to_q`` is about one bfloat16 step of W."""
    teacher = _build("teacher", model=str(sd3_pipeline_dir))
    student = _build("student", init_from=teacher, lora_rank=4, lora_alpha=8.0)
    layer = student.transformer.get_submodule(LAYER)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        b = layer.lora_B[student.adapter].weight
        b.copy_(torch.randn(b.shape, generator=generator))
        delta = 2.0 * b @ layer.lora_A[student.adapter].weight
        weight = layer.base_layer.weight
        # One bfloat16 step of |W| is |W| * 2^-7; make the mean |delta| about that.
        b.mul_(float(weight.abs().mean() * 2.0**-7 / delta.abs().mean()))
    return student


def _saved_weight(directory: Path) -> torch.Tensor:
    """The merged ``to_q`` weight as the export stored it (its dtype included)."""
    from safetensors.torch import load_file

    (path,) = (directory / "transformer").glob("*.safetensors")
    return load_file(str(path))[LAYER + ".weight"]


def test_the_float32_merge_is_the_nearest_bfloat16_and_a_bfloat16_merge_is_not(
    student: SD3Model, tmp_path: Path
) -> None:
    layer = student.transformer.get_submodule(LAYER)
    adapter = student.adapter
    w = layer.base_layer.weight.detach()
    a = layer.lora_A[adapter].weight.detach()
    b = layer.lora_B[adapter].weight.detach()
    true = w.double() + 2.0 * (b.double() @ a.double())
    in_bf16 = w.bfloat16() + (2.0 * b @ a).bfloat16()  # bfloat16 arithmetic throughout

    export_pipeline(student, tmp_path, student_timesteps=[1.0], dtype=torch.bfloat16)
    merged = _saved_weight(tmp_path)
    assert merged.dtype == torch.bfloat16
    assert torch.equal(merged, true.bfloat16())  # rounded once, from the float32 sum

    ours, theirs = (merged.double() - true).abs(), (in_bf16.double() - true).abs()
    assert bool((ours <= theirs).all())
    assert int((merged != in_bf16).sum()) > 0.05 * merged.numel()
    assert float(ours.sum()) < 0.9 * float(theirs.sum())


def test_the_merge_keeps_float32_when_the_run_computed_in_float32(
    student: SD3Model, tmp_path: Path
) -> None:
    export_pipeline(student, tmp_path, student_timesteps=[1.0])
    saved = _saved_weight(tmp_path)
    layer = student.transformer.get_submodule(LAYER)
    adapter = student.adapter
    expected = layer.base_layer.weight + 2.0 * (
        layer.lora_B[adapter].weight @ layer.lora_A[adapter].weight
    )
    assert saved.dtype == torch.float32
    torch.testing.assert_close(saved, expected.detach())
