"""Recipes: golden error messages, overrides, defaults and the resolved-TOML round trip."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import tomllib

from gdmd.errors import RecipeError
from gdmd.recipe import apply_overrides, load_recipe, parse_recipe
from gdmd.recipe.overrides import parse_override

from .conftest import VALID_RECIPE, ClipConfig, FakeUnetConfig, GdmdTargetConfig, LoraConfig

Write = Callable[..., str]

MINIMAL = """\
[teacher]
kind = "fake-unet"

[prompts]
kind = "list"
prompts = ["a red circle"]
"""


def problems_of(path: str, pm: Any, overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, pm, overrides)
    assert info.value.exit_code == 2
    return info.value.problems


def only_problem(path: str, pm: Any, overrides: tuple[str, ...] = ()) -> str:
    problems = problems_of(path, pm, overrides)
    assert len(problems) == 1, problems
    return problems[0]


# -- golden messages -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "[train]\nstpes = 10\n",
            '[train] stpes: unknown key (did you mean "steps"?)',
        ),
        ('[train]\nsteps = "ten"\n', '[train] steps: expected an integer, got "ten"'),
        ("[train]\nsteps = 0\n", "[train] steps: must be >= 1, got 0"),
        ("[train]\nstudent_lr = 0\n", "[train] student_lr: must be > 0, got 0"),
        ("[train]\nsteps = 2.5\n", "[train] steps: expected an integer, got 2.5"),
        (
            "[train]\nbackward_simulation = 1\n",
            "[train] backward_simulation: expected true or false, got 1",
        ),
        ("[train]\nadam_betas = [0.9]\n", "[train] adam_betas: expected 2 values, got 1"),
        ("[train]\nadam_betas = [0.9, 1.5]\n", "[train] adam_betas[1]: must be < 1, got 1.5"),
        (
            "[train]\nrenoise_range = [0.5, 0.2]\n",
            "[train] renoise_range: low must be below high, got [0.5, 0.2]",
        ),
        (
            '[accelerate]\nmixed_precision = "bf61"\n',
            '[accelerate] mixed_precision: must be one of "no", "fp16", "bf16", got "bf61" '
            '(did you mean "bf16"?)',
        ),
        (
            '[log]\ntrackers = ["wandb"]\n',
            '[log] trackers[0]: must be one of "tensorboard", "jsonl", got "wandb"',
        ),
        ("[eval]\nseeds = []\n", "[eval] seeds: needs at least 1 item, got 0"),
        ('[run]\nname = ""\n', "[run] name: must not be empty"),
        (
            '[target]\nkind = "gdmdd"\n',
            '[target] kind: unknown target "gdmdd"; did you mean "gdmd"? Known targets: dmd, gdmd',
        ),
        (
            '[target]\nkind = "gdmd"\nk = 0\n',
            "[target] k: must be >= 1, got 0",
        ),
        (
            '[target]\nkind = "gdmd"\nvray = "t"\n',
            '[target] vray: unknown key (did you mean "vary"?)',
        ),
        (
            '[target]\nkind = "dmd"\nk = 4\n',
            "[target] k: unknown key (known keys: kind)",
        ),
        (
            "[reward.clip]\nwieght = 0.5\n",
            '[reward.clip] wieght: unknown key (did you mean "weight"?)',
        ),
        (
            "[reward.clip]\nscale = -1.0\n",
            "[reward.clip] scale: must be > 0, got -1.0",
        ),
        (
            "[reward.hpsv3]\n",
            '[reward.hpsv3] kind: unknown reward "hpsv3"; did you mean "hpsv2"? Known rewards: '
            'clip, hpsv2, toy-checker (with no kind set, the kind is the label "hpsv3")',
        ),
        (
            '[student]\nkind = "teacher-only"\n',
            '[student] kind: model "teacher-only" cannot be a student; it can be: teacher',
        ),
        (
            "[student]\nlora = { rnak = 2 }\n",
            '[student] lora.rnak: unknown key (did you mean "rank"?)',
        ),
        (
            "[student]\nsteps = 4\ntimesteps = [1.0, 0.5, 0.6, 0.2]\n",
            "[student] timesteps: must be strictly decreasing, got [1.0, 0.5, 0.6, 0.2]",
        ),
        (
            "[student]\nsteps = 2\ntimesteps = [1.0, 0.5, 0.25]\n",
            "[student] timesteps: needs one value per step (2), got 3",
        ),
        (
            "[student]\nsteps = 2\ntimesteps = [1.0, 0.0]\n",
            "[student] timesteps[1]: must be > 0, got 0.0",
        ),
        (
            '[critic]\ninit_from = "student"\n',
            '[critic] init_from: must be one of "teacher", got "student"',
        ),
        ("run = 3\n", "[run]: expected a table, got 3"),
        ("[trian]\nsteps = 1\n", '[trian]: unknown table (did you mean "[train]"?)'),
        (
            "seed = 1\n",
            "seed: unknown key outside any table (known tables: run, teacher, student, critic, "
            "reward, target, prompts, train, accelerate, log, eval)",
        ),
    ],
)
def test_golden_messages(write_recipe: Write, fake_pm: Any, extra: str, expected: str) -> None:
    # Top-level keys must come before the first table in TOML.
    text = extra + MINIMAL if not extra.startswith("[") else MINIMAL + extra
    path = write_recipe(text)
    assert only_problem(path, fake_pm) == f"recipes/x.toml: {expected}"


def test_component_config_errors_name_the_key(write_recipe: Write, fake_pm: Any) -> None:
    path = write_recipe(MINIMAL.replace('kind = "fake-unet"', 'kind = "fake-unet"\nwidht = 0'))
    assert only_problem(path, fake_pm) == (
        'recipes/x.toml: [teacher] widht: unknown key (did you mean "width"?)'
    )


def test_all_problems_are_reported_at_once(write_recipe: Write, fake_pm: Any) -> None:
    path = write_recipe(
        """\
[trian]

[teacher]
kind = "fake-unet"
guidance_scale = -1

[reward.clip]
wieght = 2

[target]
kind = "gdmdd"

[prompts]
kind = "list"
prompts = []

[train]
steps = "ten"
batch_size = 0
"""
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(path, fake_pm)
    assert info.value.problems == [
        'recipes/x.toml: [trian]: unknown table (did you mean "[train]"?)',
        "recipes/x.toml: [teacher] guidance_scale: must be >= 0, got -1",
        'recipes/x.toml: [reward.clip] wieght: unknown key (did you mean "weight"?)',
        'recipes/x.toml: [target] kind: unknown target "gdmdd"; did you mean "gdmd"? '
        "Known targets: dmd, gdmd",
        "recipes/x.toml: [prompts] prompts: needs at least 1 item, got 0",
        'recipes/x.toml: [train] steps: expected an integer, got "ten"',
        "recipes/x.toml: [train] batch_size: must be >= 1, got 0",
    ]
    assert str(info.value).startswith("7 problems in the recipe:\n  recipes/x.toml: [trian]")


def test_missing_tables(write_recipe: Write, fake_pm: Any) -> None:
    path = write_recipe("[train]\nsteps = 3\n")
    assert problems_of(path, fake_pm) == [
        "recipes/x.toml: [teacher]: missing table; every recipe needs one",
        "recipes/x.toml: [prompts]: missing table; every recipe needs one",
    ]


def test_toml_syntax_error_names_file_and_line(write_recipe: Write, fake_pm: Any) -> None:
    path = write_recipe(MINIMAL + "[train]\nsteps = \n")
    assert only_problem(path, fake_pm) == (
        "recipes/x.toml: line 8, column 9: invalid TOML: invalid value"
    )


def test_missing_file(write_recipe: Write, fake_pm: Any) -> None:
    write_recipe(MINIMAL)
    assert only_problem("recipes/missing.toml", fake_pm) == ("recipes/missing.toml: file not found")


def test_unknown_teacher_kind_does_not_cascade(write_recipe: Write, fake_pm: Any) -> None:
    path = write_recipe(MINIMAL.replace('"fake-unet"', '"fake-unte"') + "[student]\nsteps = 2\n")
    assert only_problem(path, fake_pm) == (
        'recipes/x.toml: [teacher] kind: unknown model "fake-unte"; did you mean "fake-unet"? '
        "Known models: fake-unet, teacher-only"
    )


def test_defaulted_student_kind_must_fit_the_role(write_recipe: Write, fake_pm: Any) -> None:
    path = write_recipe(MINIMAL.replace('"fake-unet"', '"teacher-only"'))
    assert problems_of(path, fake_pm) == [
        'recipes/x.toml: [student] kind: model "teacher-only" (the teacher\'s kind, used when '
        "no kind is set) cannot be a student; it can be: teacher",
        'recipes/x.toml: [critic] kind: model "teacher-only" (the teacher\'s kind, used when '
        "no kind is set) cannot be a critic; it can be: teacher",
    ]


# -- a valid recipe --------------------------------------------------------------------------


def test_valid_recipe_resolves_components(write_recipe: Write, fake_pm: Any) -> None:
    recipe = load_recipe(write_recipe(VALID_RECIPE), fake_pm)
    assert recipe.run.name == "fake" and recipe.run.seed == 3
    assert recipe.teacher.kind == "fake-unet" and recipe.teacher.guidance_scale == 4.5
    assert recipe.teacher.config == FakeUnetConfig(width=16)
    assert recipe.teacher.component is fake_pm.registries.models.get("fake-unet")
    # Student and critic default to the teacher's family and start from its keys.
    assert recipe.student.kind == "fake-unet" and recipe.student.steps == 2
    assert recipe.student.config == FakeUnetConfig(width=16, lora=LoraConfig(rank=8))
    assert recipe.student.init_from == "teacher" and recipe.student.timesteps is None
    assert recipe.critic.config == FakeUnetConfig(width=16)
    assert list(recipe.rewards) == ["clip", "checker"]
    clip, checker = recipe.rewards["clip"], recipe.rewards["checker"]
    assert (clip.kind, clip.weight, clip.normalise, clip.config) == (
        "clip",
        0.5,
        "group",
        ClipConfig(),
    )
    assert (checker.kind, checker.normalise, checker.component.name) == (
        "toy-checker",
        "none",
        "toy-checker",
    )
    assert recipe.target.config == GdmdTargetConfig(k=3)
    assert recipe.prompts.config.prompts == ["a red circle", "two blue squares"]
    assert recipe.train.steps == 10 and recipe.train.grad_clip is None
    assert recipe.train.batch_size == 4 and recipe.accelerate.mixed_precision == "no"
    assert recipe.log.trackers == ["tensorboard"] and recipe.eval.seeds == [0]
    assert list(recipe.components()) == [
        "teacher",
        "student",
        "critic",
        "reward.clip",
        "reward.checker",
        "target",
        "prompts",
    ]
    assert recipe.summary() == (
        "8 tables, target gdmd, teacher fake-unet, student fake-unet (2 steps), critic "
        "fake-unet, rewards clip, toy-checker (checker), prompts list"
    )
    built = recipe.student.build("ctx")
    assert built == {"config": recipe.student.config, "ctx": "ctx"}


def test_defaults_fill_absent_tables(write_recipe: Write, fake_pm: Any) -> None:
    recipe = load_recipe(write_recipe(MINIMAL), fake_pm)
    assert recipe.target.kind == "dmd" and recipe.rewards == {}
    assert recipe.student.steps == 4 and recipe.student.timesteps is None
    assert recipe.train.grad_clip == 10.0 and recipe.train.renoise_beta is None
    assert recipe.run.output_dir == "runs"


def test_student_keys_override_inherited_teacher_keys(write_recipe: Write, fake_pm: Any) -> None:
    path = write_recipe(
        MINIMAL.replace('kind = "fake-unet"', 'kind = "fake-unet"\nwidth = 16\ncheckpoint = "t"')
        + '[student]\nwidth = 4\n[critic]\ninit_from = false\ncheckpoint = "c"\n'
    )
    recipe = load_recipe(path, fake_pm)
    assert recipe.student.config == FakeUnetConfig(width=4, checkpoint="t")
    assert recipe.critic.config == FakeUnetConfig(width=16, checkpoint="c")
    assert recipe.critic.init_from is None


def test_to_toml_round_trip(write_recipe: Write, fake_pm: Any) -> None:
    first = load_recipe(write_recipe(VALID_RECIPE), fake_pm)
    text = first.to_toml()
    assert text.startswith("# Resolved by gdmd ")
    data = tomllib.loads(text)
    assert data["train"]["grad_clip"] is False and data["student"]["init_from"] == "teacher"
    assert data["student"]["width"] == 16 and data["student"]["lora"] == {"rank": 8}
    assert data["train"]["critic_steps"] == 5 and data["eval"]["num_images"] == 200
    assert "timesteps" not in data["student"] and "ema_decay" not in data["train"]
    second = load_recipe(write_recipe(text, "resolved.toml"), fake_pm)
    assert second.to_dict() == first.to_dict()
    for name in (
        "run",
        "teacher",
        "student",
        "critic",
        "rewards",
        "target",
        "prompts",
        "train",
        "accelerate",
        "log",
        "eval",
    ):
        assert getattr(second, name) == getattr(first, name), name
    assert second.to_toml().split("\n", 1)[1] == text.split("\n", 1)[1]


def test_round_trip_keeps_explicit_timesteps_and_off_switches(
    write_recipe: Write, fake_pm: Any
) -> None:
    path = write_recipe(
        MINIMAL + "[student]\ninit_from = false\nsteps = 2\ntimesteps = [0.9, 0.3]\n"
        "[train]\nema_decay = 0.99\nrenoise_beta = [4.0, 1.5]\n"
    )
    first = load_recipe(path, fake_pm)
    assert first.student.timesteps == (0.9, 0.3)
    second = parse_recipe(tomllib.loads(first.to_toml()), "resolved.toml", fake_pm)
    assert second.student == first.student and second.train == first.train
    assert second.train.renoise_beta == (4.0, 1.5)


# -- overrides -------------------------------------------------------------------------------


def test_overrides_are_typed(write_recipe: Write, fake_pm: Any) -> None:
    # The dmd target takes no k, so drop the recipe's before switching the kind.
    recipe = load_recipe(
        write_recipe(VALID_RECIPE.replace("k = 3\n", "")),
        fake_pm,
        [
            "train.steps=20",
            "reward.clip.weight=0.25",
            "target.kind=dmd",
            "run.name=2024",
            "train.adam_betas=[0.8, 0.95]",
            "student.lora={rank = 2}",
            'prompts.prompts=["one", "two"]',
            "train.backward_simulation=false",
            'reward."new label".kind=hpsv2',
        ],
    )
    assert recipe.train.steps == 20 and recipe.rewards["clip"].weight == 0.25
    assert recipe.target.kind == "dmd" and recipe.run.name == "2024"
    assert recipe.train.adam_betas == (0.8, 0.95)
    assert recipe.student.config.lora == LoraConfig(rank=2)
    assert recipe.prompts.config.prompts == ["one", "two"]
    assert recipe.train.backward_simulation is False
    assert recipe.rewards["new label"].kind == "hpsv2"


def test_override_errors_name_the_override(write_recipe: Write, fake_pm: Any) -> None:
    path = write_recipe(VALID_RECIPE)
    assert problems_of(
        path, fake_pm, ("train.steps=ten", "train.stpes=3", "trainsteps", "train.steps.x=1")
    ) == [
        "recipes/x.toml: --set trainsteps: expected KEY=VALUE, e.g. train.steps=100",
        "recipes/x.toml: --set train.steps.x=1: train.steps is not a table",
        'recipes/x.toml: [train] steps: expected an integer, got "ten" '
        "(from --set train.steps=ten)",
        'recipes/x.toml: [train] stpes: unknown key (did you mean "steps"?) '
        "(from --set train.stpes=3)",
    ]


def test_override_of_kind(write_recipe: Write, fake_pm: Any) -> None:
    path = write_recipe(VALID_RECIPE)
    assert only_problem(path, fake_pm, ("target.kind=gdmdd",)) == (
        'recipes/x.toml: [target] kind: unknown target "gdmdd"; did you mean "gdmd"? '
        "Known targets: dmd, gdmd (from --set target.kind=gdmdd)"
    )


def test_apply_overrides() -> None:
    data = {"train": {"steps": 5}}
    result = apply_overrides(
        data, ["train.steps=10", "reward.clip.weight=0.5", "target.kind=gdmd", 'run.name="x y"']
    )
    assert result == {
        "train": {"steps": 10},
        "reward": {"clip": {"weight": 0.5}},
        "target": {"kind": "gdmd"},
        "run": {"name": "x y"},
    }
    assert data == {"train": {"steps": 5}}
    with pytest.raises(RecipeError) as info:
        apply_overrides(data, ["train.steps"])
    assert info.value.problems == ["--set train.steps: expected KEY=VALUE, e.g. train.steps=100"]


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("a.b=1", ("a", "b"), 1),
        ("a.b = 1.5", ("a", "b"), 1.5),
        ("a=true", ("a",), True),
        ("a=[1, 2]", ("a",), [1, 2]),
        ('a="quoted = x"', ("a",), "quoted = x"),
        ("a=bare word", ("a",), "bare word"),
        ("a=", ("a",), ""),
        ("a=2024-01-01", ("a",), "2024-01-01"),
        ('reward."my clip".weight=2', ("reward", "my clip", "weight"), 2),
    ],
)
def test_parse_override(text: str, path: tuple[str, ...], value: Any) -> None:
    override = parse_override(text)
    assert (override.path, override.value) == (path, value)
