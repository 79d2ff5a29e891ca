"""Built-in reward models and the public kit reward authors build on.

* :mod:`gdmd.rewards.simple`: ``brightness`` and ``channel``, which need no checkpoint;
* :mod:`gdmd.rewards.clip`: ``clip`` (CLIPScore) and ``pickscore`` on transformers' CLIP;
* :mod:`gdmd.rewards.aesthetic`: ``aesthetic``, the LAION aesthetic predictor;
* the kit, public API for plugin authors (docs/architecture.md lists it):
  :mod:`~gdmd.rewards.base` (input checks and batching), :mod:`~gdmd.rewards.preprocess`
  (the official scorers' image transforms on tensors), :mod:`~gdmd.rewards.loading`
  (checkpoints from a hub id, directory or file, with errors that name the reward) and
  :class:`~gdmd.rewards.clip.CLIPScorer`. Every name of ``__all__`` is importable from here
  (``from gdmd.rewards import BatchedReward``) or from its module.

The learned toy rewards live in :mod:`gdmd.toy`; HPSv2, ImageReward and GenEval are the
first-party plugin distributions under ``plugins/``. Importing this package imports no torch:
the kit's modules are imported when one of their names is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gdmd.rewards.base import BatchedReward, PromptCache
    from gdmd.rewards.clip import (
        CLIPScorer,
        clip_tokenize,
        image_transform_from_processor,
        load_clip_model,
        load_tokenizer,
    )
    from gdmd.rewards.loading import (
        RewardLoadError,
        check_keys,
        count_blocks,
        describe_keys,
        first_line,
        is_hub_id,
        load_checkpoint,
        load_error_details,
        load_strictly,
        load_torch_state_dict,
        offline_hint,
        resolve_file,
        torch_dtype,
    )
    from gdmd.rewards.preprocess import (
        CLIP_MEAN,
        CLIP_STD,
        ResizeCropNormalize,
        ResizeLongestPadNormalize,
        center_crop,
        normalize,
        resize,
        resize_longest_and_pad,
        shortest_edge_size,
    )

#: Each public name of the kit and the module it lives in.
_HOMES = {
    "BatchedReward": "base",
    "PromptCache": "base",
    "CLIPScorer": "clip",
    "clip_tokenize": "clip",
    "image_transform_from_processor": "clip",
    "load_clip_model": "clip",
    "load_tokenizer": "clip",
    "RewardLoadError": "loading",
    "check_keys": "loading",
    "count_blocks": "loading",
    "describe_keys": "loading",
    "first_line": "loading",
    "is_hub_id": "loading",
    "load_checkpoint": "loading",
    "load_error_details": "loading",
    "load_strictly": "loading",
    "load_torch_state_dict": "loading",
    "offline_hint": "loading",
    "resolve_file": "loading",
    "torch_dtype": "loading",
    "CLIP_MEAN": "preprocess",
    "CLIP_STD": "preprocess",
    "ResizeCropNormalize": "preprocess",
    "ResizeLongestPadNormalize": "preprocess",
    "center_crop": "preprocess",
    "normalize": "preprocess",
    "resize": "preprocess",
    "resize_longest_and_pad": "preprocess",
    "shortest_edge_size": "preprocess",
}

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "BatchedReward",
    "CLIPScorer",
    "PromptCache",
    "ResizeCropNormalize",
    "ResizeLongestPadNormalize",
    "RewardLoadError",
    "center_crop",
    "check_keys",
    "clip_tokenize",
    "count_blocks",
    "describe_keys",
    "first_line",
    "image_transform_from_processor",
    "is_hub_id",
    "load_checkpoint",
    "load_clip_model",
    "load_error_details",
    "load_strictly",
    "load_tokenizer",
    "load_torch_state_dict",
    "normalize",
    "offline_hint",
    "resize",
    "resize_longest_and_pad",
    "resolve_file",
    "shortest_edge_size",
    "torch_dtype",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"gdmd.rewards.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'gdmd.rewards' has no attribute {name!r}")
