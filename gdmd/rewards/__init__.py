"""Built-in reward models and the pieces reward authors can build on.

* :mod:`gdmd.rewards.simple`: ``brightness`` and ``channel``, which need no checkpoint;
* :mod:`gdmd.rewards.clip`: ``clip`` (CLIPScore) and ``pickscore`` on transformers' CLIP;
* :mod:`gdmd.rewards.base`, :mod:`~gdmd.rewards.preprocess`, :mod:`~gdmd.rewards.loading`:
  input checks and batching, the official scorers' image transforms on tensors, and loading
  from a hub id, directory or file with errors that name the reward.

The learned toy rewards live in :mod:`gdmd.toy`; HPSv2 and ImageReward are the first-party
plugin distributions under ``plugins/``. Importing this package imports no torch.
"""
