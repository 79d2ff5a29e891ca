"""The tiny-unet model family: contracts, guidance, persistence, factory, pretraining."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from gdmd.errors import ContractError, GdmdError
from gdmd.interfaces import BuildContext, DiffusionModel
from gdmd.models.pretrain import pretrain_flow_matching
from gdmd.models.tiny import (
    ModelLoadError,
    PixelDecoder,
    TinyDiffusionModel,
    TinyUNetConfig,
    WordTokenizer,
    build_tiny_unet,
)
from gdmd.sampling import sample


@pytest.fixture(autouse=True)
def one_thread():
    """These models are small enough that a second thread only adds contention on the
    shared CPU (measured: about 7x slower steps under load with two threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = {
    "image_size": 8,
    "channels": (8, 16),
    "text_width": 16,
    "text_layers": 1,
    "heads": 2,
    "max_tokens": 8,
}


def tiny_config(**overrides: object) -> TinyUNetConfig:
    return TinyUNetConfig(**{**TINY, **overrides})


def context(seed: int = 0, **components: object) -> BuildContext:
    return BuildContext(
        device=torch.device("cpu"),
        dtype=torch.float32,
        generator=torch.Generator().manual_seed(seed),
        components=dict(components),
    )


def scrambled(model: TinyDiffusionModel, seed: int = 0) -> TinyDiffusionModel:
    """Random weights everywhere: a fresh model's zero-initialised output ignores the prompt."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


def inputs(batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 8, 8, generator=generator), torch.rand(batch, generator=generator)


PROMPTS = ["a red circle left of a blue square", "two green triangles", ""]


def test_shapes_dtypes_and_protocol() -> None:
    model = build_tiny_unet(tiny_config(), context())
    assert isinstance(model, DiffusionModel)
    assert model.sample_shape == (3, 8, 8)
    cond = model.encode_prompts(PROMPTS)
    assert cond["tokens"].dtype == torch.long and cond["tokens"].shape == (3, 8)
    assert cond["mask"].dtype == torch.bool and cond["mask"].shape == (3, 8)
    assert not cond["mask"][2].any()
    x_t, t = inputs()
    x0 = model(x_t, t, cond)
    assert x0.shape == (3, 3, 8, 8) and x0.dtype == torch.float32
    assert model.predict_output(x_t, t, cond).shape == (3, 3, 8, 8)
    assert torch.equal(model.predict_x0(x_t, t, cond), x0)
    images = model.decoder.decode(x0)
    assert images.shape == (3, 3, 8, 8) and 0 <= images.min() and images.max() <= 1
    assert len(list(model.trainable_parameters())) == len(list(model.parameters()))


def test_default_config_builds_the_benchmark_teacher() -> None:
    config = TinyUNetConfig()
    assert config.resolved_attention_levels() == {1, 2}
    model = TinyDiffusionModel(config)
    assert model.sample_shape == (3, 32, 32)
    assert 2_500_000 < sum(p.numel() for p in model.parameters()) < 4_000_000
    tokens = model.encode_prompts(["a red circle left of a blue square"])["tokens"][0]
    assert WordTokenizer.UNK not in tokens.tolist()


def test_contract_errors_name_the_problem() -> None:
    model = build_tiny_unet(tiny_config(), context())
    cond = model.encode_prompts(PROMPTS)
    x_t, t = inputs()
    with pytest.raises(ContractError, match="x_t of shape"):
        model(x_t[:, :, :4], t, cond)
    with pytest.raises(ContractError, match="lacks"):
        model(x_t, t, {"tokens": cond["tokens"]})
    with pytest.raises(ContractError, match="3 samples but 2 prompts"):
        model(x_t, t, model.encode_prompts(PROMPTS[:2]))
    with pytest.raises(TypeError, match="single str"):
        model.encode_prompts("a red circle")


def test_guidance_scales_one_and_zero_are_the_plain_predictions() -> None:
    model = scrambled(build_tiny_unet(tiny_config(), context()))
    x_t, t = inputs()
    cond = model.encode_prompts(PROMPTS)
    conditional = model(x_t, t, cond)
    unconditional = model(x_t, t, model.encode_prompts([""] * 3))
    assert not torch.allclose(conditional[:2], unconditional[:2], atol=1e-3)
    torch.testing.assert_close(model(x_t, t, cond, guidance_scale=1.0), conditional)
    torch.testing.assert_close(model(x_t, t, cond, guidance_scale=0.0), unconditional)
    torch.testing.assert_close(
        model(x_t, t, cond, guidance_scale=3.0),
        unconditional + 3.0 * (conditional - unconditional),
        rtol=1e-4,
        atol=1e-4,
    )


def test_guidance_runs_one_batched_forward() -> None:
    model = build_tiny_unet(tiny_config(), context())
    batches: list[int] = []
    model.unet.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    x_t, t = inputs()
    model(x_t, t, model.encode_prompts(PROMPTS), guidance_scale=4.5)
    assert batches == [6]


def test_tokenizer_keeps_order_and_maps_unknown_words() -> None:
    tokenizer = WordTokenizer(["a", "red", "circle", "left", "of", "blue", "square"], 6)
    ids = tokenizer.encode("A red circle, LEFT of a blue square!")
    assert tokenizer.decode(ids) == ["a", "red", "circle", "left", "of", "a"]
    assert tokenizer.encode("a blue circle") != tokenizer.encode("circle a blue")
    assert tokenizer.encode("a zebra") == [tokenizer._ids["a"], WordTokenizer.UNK]
    assert tokenizer.words("red-circle 3x") == ["red", "circle", "x"]
    tokens, mask = tokenizer(["red square", ""])
    assert tokens.tolist() == [[3, 8, 0, 0, 0, 0], [0] * 6]
    assert mask.tolist() == [[True, True] + [False] * 4, [False] * 6]


def test_word_order_changes_the_prediction() -> None:
    model = scrambled(build_tiny_unet(tiny_config(), context()))
    x_t, t = inputs(2)
    cond = model.encode_prompts(["a red circle left of a blue square"] * 2)
    swapped = model.encode_prompts(["a blue square left of a red circle"] * 2)
    assert not torch.allclose(model(x_t, t, cond), model(x_t, t, swapped), atol=1e-4)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = scrambled(build_tiny_unet(tiny_config(), context())).eval()
    model.save_pretrained(tmp_path / "teacher")
    assert sorted(p.name for p in (tmp_path / "teacher").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = TinyDiffusionModel.from_pretrained(tmp_path / "teacher")
    x_t, t = inputs()
    cond = model.encode_prompts(PROMPTS)
    assert torch.equal(loaded(x_t, t, cond, guidance_scale=2.0), model(x_t, t, cond, 2.0))
    assert loaded.config.architecture() == model.config.architecture()


def test_loading_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError, match="nowhere.*does not exist"):
        TinyDiffusionModel.from_pretrained(missing)
    with pytest.raises(GdmdError, match="config.json"):
        TinyDiffusionModel.from_pretrained(tmp_path)

    small = build_tiny_unet(tiny_config(), context())
    small.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="model.safetensors.*does not exist"):
        TinyDiffusionModel.from_pretrained(tmp_path / "model")

    # Weights of one architecture under the config of another.
    small.save_pretrained(tmp_path / "model")
    wide = build_tiny_unet(tiny_config(channels=(16, 16)), context())
    wide.save_pretrained(tmp_path / "wide")
    (tmp_path / "wide" / "config.json").replace(tmp_path / "model" / "config.json")
    with pytest.raises(ModelLoadError, match=r"model\.safetensors.*wrong shape"):
        TinyDiffusionModel.from_pretrained(tmp_path / "model")

    (tmp_path / "model" / "config.json").write_text(json.dumps({"family": "sd3"}))
    with pytest.raises(ModelLoadError, match="not a tiny-unet config"):
        TinyDiffusionModel.from_pretrained(tmp_path / "model")


def test_factory_loads_config_model(tmp_path: Path) -> None:
    saved = scrambled(build_tiny_unet(tiny_config(), context()))
    saved.save_pretrained(tmp_path / "teacher")
    loaded = build_tiny_unet(TinyUNetConfig(model=str(tmp_path / "teacher")), context())
    assert loaded.config.channels == (8, 16) and loaded.config.model == str(tmp_path / "teacher")
    x_t, t = inputs()
    cond = saved.encode_prompts(PROMPTS)
    assert torch.equal(loaded(x_t, t, cond), saved(x_t, t, cond))
    with pytest.raises(ModelLoadError, match=r"channels = \[48, 96\]"):
        build_tiny_unet(
            TinyUNetConfig(model=str(tmp_path / "teacher"), channels=(48, 96)), context()
        )


def test_factory_deep_copies_init_from() -> None:
    teacher = scrambled(build_tiny_unet(tiny_config(), context())).requires_grad_(False).eval()
    student = build_tiny_unet(TinyUNetConfig(prompt_dropout=0.0), context(init_from=teacher))
    assert student is not teacher
    assert student.config.channels == (8, 16) and student.config.prompt_dropout == 0.0
    for (name, s), t in zip(student.named_parameters(), teacher.parameters(), strict=True):
        assert torch.equal(s, t) and s.data_ptr() != t.data_ptr(), name
        assert s.requires_grad
    with torch.no_grad():
        next(student.parameters()).add_(1.0)
    assert not torch.equal(next(student.parameters()), next(teacher.parameters()))
    assert not next(teacher.parameters()).requires_grad

    with pytest.raises(ModelLoadError, match="text_width"):
        build_tiny_unet(tiny_config(text_width=32), context(init_from=teacher))
    with pytest.raises(ModelLoadError, match="only initialise from another tiny-unet"):
        build_tiny_unet(tiny_config(), context(init_from=torch.nn.Linear(2, 2)))


def test_factory_seeding_is_deterministic_and_leaves_global_rng() -> None:
    global_state = torch.get_rng_state()
    ctx = context(seed=7)
    first = build_tiny_unet(tiny_config(), ctx)
    assert torch.equal(torch.get_rng_state(), global_state)
    assert not torch.equal(ctx.generator.get_state(), torch.Generator().manual_seed(7).get_state())
    second = build_tiny_unet(tiny_config(), context(seed=7))
    other = build_tiny_unet(tiny_config(), context(seed=8))
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    assert not torch.equal(first.unet.stem.weight, other.unet.stem.weight)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image_size": 10}, r"divisible by 2\*\*len\(channels\) = 4"),
        ({"attention_levels": (2,)}, "out of range"),
        ({"attention_levels": (1, -1)}, "repeat"),
        ({"heads": 3}, "not divisible by heads"),
        ({"vocabulary": ["Red"]}, "lowercase letters"),
        ({"vocabulary": ["red", "red"]}, "duplicate"),
        ({"channels": (2, 16)}, "greater than or equal to 4"),
        ({"prompt_dropout": 1.5}, "less than or equal to 1"),
        ({"colour": "red"}, "Extra inputs"),
    ],
)
def test_config_validation(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        tiny_config(**overrides)


def test_pixel_decoder_gradient_never_pushes_out_of_range() -> None:
    x = torch.tensor([[-2.0, -2.0, 0.0, 2.0, 2.0]]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    x = x.clone().requires_grad_(True)
    images = PixelDecoder().decode(x)
    assert images[0, 0, 0].tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    # Loss gradient signs per pixel; descent moves x by -grad.
    upstream = torch.tensor([-1.0, 1.0, 1.0, -1.0, 1.0]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    (images * upstream).sum().backward()
    # Pixel -2 with grad -1 would move up (back in): kept; with grad +1 (further out): zeroed.
    assert x.grad is not None
    assert x.grad[0, 0, 0].tolist() == [-0.5, 0.0, 0.5, 0.0, 0.5]


def _solid_colour_batches(batch: int, generator: torch.Generator):
    red = torch.tensor([1.0, -1.0, -1.0]).reshape(3, 1, 1).expand(3, 8, 8)
    blue = torch.tensor([-1.0, -1.0, 1.0]).reshape(3, 1, 1).expand(3, 8, 8)
    while True:
        is_red = torch.rand(batch, generator=generator) < 0.5
        images = torch.stack([red if r else blue for r in is_red.tolist()])
        yield images, ["red" if r else "blue" for r in is_red.tolist()]


def test_pretraining_learns_colours_from_prompts() -> None:
    model = build_tiny_unet(tiny_config(vocabulary=["red", "blue"]), context())
    losses: list[float] = []
    generator = torch.Generator().manual_seed(0)
    pretrain_flow_matching(
        model,
        _solid_colour_batches(16, torch.Generator().manual_seed(1)),
        steps=50,
        lr=1e-2,
        generator=generator,
        progress=lambda step, loss: losses.append(loss),
    )
    assert len(losses) == 50
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    images = model.decoder.decode(
        sample(model, ["red"] * 4 + ["blue"] * 4, 20, None, torch.Generator().manual_seed(2))
    )
    redness = (images[:, 0] - images[:, 2]).mean(dim=(1, 2))
    assert redness[:4].mean() > redness[4:].mean() + 0.5
