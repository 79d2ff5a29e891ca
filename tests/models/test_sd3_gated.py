"""Loading a gated SD3 repository without access says so, and how to get access.

Nothing can be downloaded here, so the hub's refusal is simulated: diffusers' loader is
replaced by one that raises what huggingface_hub raises for a gated repository.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from types import SimpleNamespace
from typing import Any

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline  # noqa: E402
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError  # noqa: E402

from gdmd.interfaces import BuildContext  # noqa: E402
from gdmd.models.sd3 import SD3Config, SD3LoadError, build_sd3  # noqa: E402
from gdmd.models.sd3.encoders import ModelRef  # noqa: E402
from gdmd.models.sd3.loading import _load_transformer  # noqa: E402

REPO = "stabilityai/stable-diffusion-3.5-large"


def _response(status: int) -> Any:
    return SimpleNamespace(headers={}, request=None, status_code=status)


def _gated() -> GatedRepoError:
    return GatedRepoError(
        f"401 Client Error. Cannot access gated repo for url https://huggingface.co/{REPO}.",
        response=_response(401),
    )


def _wrapped() -> OSError:
    """diffusers' own wrapping: an OSError whose cause is the hub's error."""
    try:
        raise _gated()
    except GatedRepoError as err:
        try:
            raise OSError(f"Can't load the model for '{REPO}'.") from err
        except OSError as wrapped:
            return wrapped


def _forbidden() -> HfHubHTTPError:
    return HfHubHTTPError("Client refused", response=_response(403))


def _offline() -> OSError:
    return OSError(f"We couldn't connect to 'https://huggingface.co' to load {REPO}.")


def _build_teacher() -> Any:
    ctx = BuildContext(
        device=torch.device("cpu"),
        dtype=torch.float32,
        generator=torch.Generator().manual_seed(0),
        components={"role": "teacher"},
    )
    return build_sd3(SD3Config(model=REPO), ctx)


def _raising(error: BaseException) -> Any:
    def from_pretrained(*args: Any, **kwargs: Any) -> Any:
        raise error

    return from_pretrained


@pytest.mark.parametrize("error", [_gated, _wrapped, _forbidden], ids=["gated", "wrapped", "403"])
def test_a_gated_pipeline_says_how_to_get_access(
    monkeypatch: pytest.MonkeyPatch, error: Any
) -> None:
    monkeypatch.setattr(StableDiffusion3Pipeline, "from_pretrained", _raising(error()))
    with pytest.raises(SD3LoadError) as info:
        _build_teacher()
    message = str(info.value)
    assert f"{REPO} is a gated model" in message
    assert f"https://huggingface.co/{REPO}" in message and "accept the licence" in message
    assert "huggingface-cli login" in message and "HF_TOKEN" in message
    assert "local copy" in message
    assert "HF_HUB_OFFLINE" not in message  # not the offline advice


def test_a_gated_transformer_says_so_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SD3Transformer2DModel, "from_pretrained", _raising(_wrapped()))
    with pytest.raises(SD3LoadError, match="gated model") as info:
        _load_transformer(ModelRef(REPO, subfolder="transformer"), torch.float32)
    assert "subfolder 'transformer'" in str(info.value)


def test_an_unreachable_hub_still_gives_the_offline_advice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(StableDiffusion3Pipeline, "from_pretrained", _raising(_offline()))
    with pytest.raises(SD3LoadError, match="HF_HUB_OFFLINE") as info:
        _build_teacher()
    assert "gated" not in str(info.value) and REPO in str(info.value)
