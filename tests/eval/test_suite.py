"""``gdmd eval RUN --prompts FILE``: a tiny run and its teacher on a file of every prompt-set
format, scored by registered rewards; the files it writes, resuming, and metrics-only reruns."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gdmd.cli import make_app
from gdmd.manager import build_plugin_manager
from gdmd.testing.tiny_rewards import save_tiny_clip

PROMPTS = ["a red circle", "a blue square", "two green triangles", "a red <b>bold</b> & square"]
SEEDS = [0, 1]
MODELS = ["teacher", "tiny"]


@pytest.fixture(scope="module")
def pm():
    return build_plugin_manager(load_entrypoints=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory, teacher_dir, pm):
    """A finished tiny run (2 updates), a tiny CLIP on disk and an eval file of two metrics:
    the channel reward and CLIPScore on the tiny CLIP."""
    from train.conftest import tiny_recipe

    root = tmp_path_factory.mktemp("suite")
    recipe = root / "recipe.toml"
    recipe.write_text(tiny_recipe(root / "runs", teacher_dir))
    result = CliRunner().invoke(make_app(pm), ["run", str(recipe), "--set", "train.steps=2"])
    assert result.exit_code == 0, result.output
    clip = save_tiny_clip(root / "clip", image_size=32, patch_size=8)
    metrics = root / "metrics.toml"
    metrics.write_text(f'[metric.red]\nkind = "channel"\n\n[metric.clip]\nmodel = "{clip}"\n')
    return {"run": root / "runs" / "tiny", "clip": clip, "metrics": metrics, "root": root}


def _write_prompt_set(folder: Path, format: str) -> tuple[Path, list[tuple[str, str | None]]]:
    """A small file of ``format`` holding PROMPTS; returns it and (prompt, category) pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    if format == "hpsv2":
        path = folder / "benchmark"
        path.mkdir()
        (path / "anime.json").write_text(json.dumps(PROMPTS[:2]))
        (path / "photo.json").write_text(json.dumps(PROMPTS[2:]))
        return path, [(p, "anime") for p in PROMPTS[:2]] + [(p, "photo") for p in PROMPTS[2:]]
    if format == "drawbench":
        path = folder / "drawbench.csv"
        cats = ["Colors", "Colors", "Counting", "Text"]
        lines = ["Prompts,Category"] + [f'"{p}",{c}' for p, c in zip(PROMPTS, cats, strict=True)]
        path.write_text("\n".join(lines) + "\n")
        return path, list(zip(PROMPTS, cats, strict=True))
    if format == "parti":
        path = folder / "PartiPrompts.tsv"
        cats = ["Abstract", "Abstract", "World Knowledge", "Abstract"]
        lines = ["Prompt\tCategory\tChallenge\tNote"] + [
            f"{p}\t{c}\tBasic\t" for p, c in zip(PROMPTS, cats, strict=True)
        ]
        path.write_text("\n".join(lines) + "\n")
        return path, list(zip(PROMPTS, cats, strict=True))
    if format == "geneval":
        path = folder / "evaluation_metadata.jsonl"
        tags = ["colors", "colors", "counting", "color_attr"]
        lines = [
            json.dumps({"tag": t, "include": [{"class": "circle", "count": 1}], "prompt": p})
            for p, t in zip(PROMPTS, tags, strict=True)
        ]
        path.write_text("\n".join(lines) + "\n")
        return path, list(zip(PROMPTS, tags, strict=True))
    if format == "t2i-compbench":
        path = folder / "compbench"
        path.mkdir()
        (path / "color_val.txt").write_text("\n".join(PROMPTS[:3]) + "\n")
        (path / "numeracy_val.txt").write_text(PROMPTS[3] + "\n")
        return path, [(p, "color") for p in PROMPTS[:3]] + [(PROMPTS[3], "numeracy")]
    path = folder / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n\n")
    return path, [(p, None) for p in PROMPTS]


def _eval(pm, world, prompts: Path, out: Path, *extra: str):
    args = [
        "eval", str(world["run"]), "--prompts", str(prompts), "--teacher", "--teacher-steps",
        "3", "--seeds", "0,1", "--out", str(out), *extra,
    ]  # fmt: skip
    return CliRunner().invoke(make_app(pm), args)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.images: list[str] = []
        self.svgs = 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag == "svg":
            self.svgs += 1

    def handle_data(self, data):
        self.text.append(data)


def _check_interval(cell):
    assert cell["low"] <= cell["mean"] <= cell["high"], cell
    assert cell["level"] == 0.95


@pytest.mark.parametrize(
    "format", ["hpsv2", "drawbench", "parti", "geneval", "t2i-compbench", "text"]
)
def test_every_prompt_set_format_gives_every_output_file(pm, world, tmp_path, format) -> None:
    prompts, expected = _write_prompt_set(tmp_path / "set", format)
    out = tmp_path / "out"
    result = _eval(pm, world, prompts, out, "--metrics", str(world["metrics"]))
    assert result.exit_code == 0, result.output
    count = len(PROMPTS) * len(SEEDS) * len(MODELS)
    assert f"{count} images generated, 0 reused; {2 * count} scores computed" in result.output

    # images/<model>/<index>-<seed>.png, once per model, prompt and seed
    for model in MODELS:
        names = sorted(p.name for p in (out / "images" / model).glob("*.png"))
        assert names == sorted(f"{i}-{s}.png" for i in range(len(PROMPTS)) for s in SEEDS)

    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert len(rows) == count
    assert {(r["model"], r["index"], r["seed"]) for r in rows} == {
        (m, i, s) for m in MODELS for i in range(len(PROMPTS)) for s in SEEDS
    }
    for row in rows:
        assert (row["prompt"], row["category"]) == expected[row["index"]]
        assert set(row["metrics"]) == {"red", "clip"}
        assert (out / row["file"]).is_file()

    summary = json.loads((out / "eval.json").read_text())
    assert summary["prompts"] == {"path": str(prompts), "format": format, "count": 4}
    assert list(summary["models"]) == MODELS and summary["seeds"] == SEEDS
    categories = {c for _, c in expected if c is not None}
    for metric in ("red", "clip"):
        for model in MODELS:
            groups = summary["means"][metric][model]
            assert set(groups) == {"all", *categories}
            for cell in groups.values():
                _check_interval(cell)
            assert groups["all"]["images"] == len(PROMPTS) * len(SEEDS)
        # the mean over all images is the mean of the index's values
        values = [r["metrics"][metric] for r in rows if r["model"] == "tiny"]
        assert summary["means"][metric]["tiny"]["all"]["mean"] == pytest.approx(
            sum(values) / len(values)
        )
        difference = summary["differences"][metric]["tiny - teacher"]["all"]
        _check_interval(difference)
    frechet = summary["frechet"]
    assert frechet["clip_model"] == str(world["clip"]) and frechet["values"]["tiny"] >= 0
    assert "geneval" not in summary  # no geneval metric

    markdown = (out / "eval.md").read_text()
    assert "| model | red | clip |" in markdown
    assert "| tiny - teacher | " in markdown
    assert "## Fréchet distance to the teacher (CLIP space)" in markdown

    page = _Page()
    page.feed((out / "report.html").read_text())
    page.close()
    text = "".join(page.text)
    for name in [*MODELS, *PROMPTS]:
        assert name in text
    assert "<b>bold</b>" in text  # escaped: shown as text, not markup
    assert len([s for s in page.images]) == count
    assert all((out / src).is_file() for src in page.images)
    assert page.svgs == 2  # one bar chart per metric


def test_resume_reuses_images_and_rescores_only_what_the_index_lost(pm, world, tmp_path):
    prompts, _ = _write_prompt_set(tmp_path / "set", "text")
    out = tmp_path / "out"
    assert _eval(pm, world, prompts, out, "--metrics", str(world["metrics"])).exit_code == 0
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    lines = (out / "index.jsonl").read_text().splitlines()
    before = {json.loads(line)["file"]: json.loads(line)["metrics"] for line in lines}
    (out / "index.jsonl").write_text("\n".join(lines[: len(lines) // 2]) + "\n")

    result = _eval(pm, world, prompts, out, "--metrics", str(world["metrics"]))
    assert result.exit_code == 0, result.output
    count = len(lines)
    lost = count - count // 2
    assert f"0 images generated, {count} reused; {2 * lost} scores computed" in result.output
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} == mtimes
    after = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert len(after) == count  # compacted: one line per image
    for row in after:
        assert row["metrics"] == pytest.approx(before[row["file"]])


def test_an_interrupted_generation_resumes_with_the_same_images(pm, world, tmp_path):
    prompts, _ = _write_prompt_set(tmp_path / "set", "text")
    out = tmp_path / "out"
    assert _eval(pm, world, prompts, out, "--metrics", str(world["metrics"])).exit_code == 0
    student = sorted((out / "images" / "tiny").glob("*.png"))
    kept = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in student[::2]}
    lost = {p: p.read_bytes() for p in student[1::2]}
    for path in lost:
        path.unlink()

    result = _eval(pm, world, prompts, out, "--metrics", str(world["metrics"]))
    assert result.exit_code == 0, result.output
    assert f"{len(lost)} images generated" in result.output
    for path, (data, mtime) in kept.items():
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == data
    for path, data in lost.items():
        assert path.read_bytes() == data  # the same noise and re-noising as the first time


def test_a_metrics_only_rerun_scores_only_the_new_metric(pm, world, tmp_path):
    prompts, _ = _write_prompt_set(tmp_path / "set", "drawbench")
    out = tmp_path / "out"
    assert _eval(pm, world, prompts, out, "--metrics", str(world["metrics"])).exit_code == 0
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    first = {
        json.loads(line)["file"]: json.loads(line)["metrics"]
        for line in (out / "index.jsonl").read_text().splitlines()
    }
    more = tmp_path / "more.toml"
    more.write_text(
        world["metrics"].read_text() + '\n[metric.bright]\nkind = "brightness"\n'
        '\n[metric.blue]\nkind = "channel"\nchannel = "blue"\n'
    )
    result = _eval(pm, world, prompts, out, "--metrics", str(more))
    assert result.exit_code == 0, result.output
    count = len(mtimes)
    assert f"0 images generated, {count} reused; {2 * count} scores computed" in result.output
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} == mtimes
    for line in (out / "index.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert set(row["metrics"]) == {"red", "clip", "bright", "blue"}
        assert row["metrics"]["red"] == first[row["file"]]["red"]
    summary = json.loads((out / "eval.json").read_text())
    assert list(summary["means"]) == ["red", "clip", "bright", "blue"]

    # Changing a metric's settings rescores it (the cached value has another fingerprint).
    changed = tmp_path / "changed.toml"
    changed.write_text('[metric.red]\nkind = "channel"\nchannel = "green"\n')
    result = _eval(pm, world, prompts, out, "--metrics", str(changed))
    assert result.exit_code == 0, result.output
    assert f"0 images generated, {count} reused; {count} scores computed" in result.output


def test_the_recipe_rewards_are_the_default_metrics_and_a_new_teacher_setting_regenerates(
    pm, world, tmp_path
):
    prompts, _ = _write_prompt_set(tmp_path / "set", "text")
    out = tmp_path / "out"
    result = _eval(pm, world, prompts, out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "eval.json").read_text())
    assert list(summary["metrics"]) == ["red"]  # the tiny recipe's [reward.red]
    assert summary["frechet"] == {
        "skipped": "no CLIP model configured ([frechet] clip_model, or a clip or aesthetic "
        "metric)"
    }
    assert "Skipped: no CLIP model configured" in (out / "eval.md").read_text()
    student = {p: p.stat().st_mtime_ns for p in (out / "images" / "tiny").glob("*.png")}
    args = ["eval", str(world["run"]), "--prompts", str(prompts), "--teacher", "--out", str(out)]
    result = CliRunner().invoke(make_app(pm), [*args, "--teacher-steps", "2", "--seeds", "0,1"])
    assert result.exit_code == 0, result.output
    count = len(PROMPTS) * len(SEEDS)
    assert f"{count} images generated, {count} reused" in result.output
    assert {p: p.stat().st_mtime_ns for p in (out / "images" / "tiny").glob("*.png")} == student


def test_eval_file_errors_name_the_file_table_and_key(pm, world, tmp_path):
    prompts, _ = _write_prompt_set(tmp_path / "set", "text")
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[metric.red]\nkind = "chanel"\n\n[metric.blue]\nkind = "channel"\nchanel = "blue"\n'
        '\n[metric.clip]\nweight = 2.0\n\n[frechett]\nclip_model = "x"\n'
    )
    result = _eval(pm, world, prompts, tmp_path / "out", "--metrics", str(bad))
    assert result.exit_code == 2
    assert "4 problems in the eval file:" in result.output
    assert f'{bad}: [frechett]: unknown table (did you mean "[frechet]"?)' in result.output
    assert f"{bad}: [metric.red] kind: " in result.output and '"channel"' in result.output
    assert f'{bad}: [metric.blue] chanel: unknown key (did you mean "channel"?)' in result.output
    assert f"{bad}: [metric.clip] weight: unknown key" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics", "m.toml"], "--format and --metrics need --prompts FILE"),
        (["--seeds", "0,x"], "--seeds '0,x': expected comma-separated integers"),
    ],
)
def test_usage_errors_exit_2_without_a_traceback(pm, world, args, message):
    result = CliRunner().invoke(make_app(pm), ["eval", str(world["run"]), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_two_runs_of_the_same_folder_name_are_refused(pm, world, tmp_path):
    import shutil

    prompts, _ = _write_prompt_set(tmp_path / "set", "text")
    copy = tmp_path / "elsewhere" / "tiny"
    shutil.copytree(world["run"], copy)
    args = ["eval", str(world["run"]), str(copy), "--prompts", str(prompts)]
    result = CliRunner().invoke(make_app(pm), [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "two evaluated models would share a name (tiny, tiny)" in result.output


def test_the_shipped_paper_table_eval_file_validates() -> None:
    """recipes/eval/sd3_paper_table.toml names the five rewards of the SD3-Medium table."""
    from gdmd.eval.metrics import load_eval_file

    pm = build_plugin_manager()  # with entry points: hpsv2 and imagereward are plugins
    registered = {spec.name for spec in pm.registries if spec.kind == "reward"}
    if not {"hpsv2", "imagereward"} <= registered:
        pytest.skip("the gdmd-hpsv2 and gdmd-imagereward plugins are not installed")
    path = Path(__file__).resolve().parents[2] / "recipes" / "eval" / "sd3_paper_table.toml"
    settings = load_eval_file(path, pm)
    assert list(settings.metrics) == ["clip", "aesthetic", "pickscore", "hpsv2", "imagereward"]
    assert settings.metrics["clip"].config.model == "openai/clip-vit-large-patch14"
    assert settings.frechet.clip_model == "openai/clip-vit-large-patch14"
