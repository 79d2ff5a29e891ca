"""The Stable Diffusion 3 / 3.5 model family (``kind = "sd3"``): teacher, student and critic.

One :class:`SD3Model` wraps a diffusers ``SD3Transformer2DModel`` (the part that is trained) and
holds the frozen text encoders, tokenizers and VAE of the pipeline in a
:class:`SD3SharedComponents` object. Teacher, student and critic built from one another share
that object *by reference*: only the transformer is ever copied, so a run keeps one set of text
encoders and one VAE in memory however many models it builds.

Conventions, checked against diffusers 0.42 (``StableDiffusion3Pipeline`` and
``FlowMatchEulerDiscreteScheduler``) and pinned by ``tests/models/test_sd3.py``:

* **Noising.** The scheduler mixes ``x_t = (1 - sigma) x0 + sigma noise`` (``scale_noise``), and
  its sigmas *are* gdmd's flow time ``t`` in ``[0, 1]``. The scheduler's ``shift`` only places
  the sampler's sigmas (``sigma' = s sigma / (1 + (s - 1) sigma)``); it never changes the
  noising, which is why :class:`~gdmd.schedules.FlowMatchingSchedule` carries it as a number only.
* **Time input.** The pipeline passes ``timestep = sigma * num_train_timesteps`` (1000) to the
  transformer, so :meth:`SD3Model.predict_x0` passes ``t * 1000`` (kept in float32: in bfloat16
  ``857.7`` would round to ``856``).
* **Output.** The transformer predicts the velocity ``v = noise - x0``: the Euler step is
  ``x_{sigma'} = x_sigma + (sigma' - sigma) v``, which for ``sigma' = 0`` is
  ``x0 = x_t - t v``, exactly :meth:`FlowMatchingSchedule.to_x0`.
* **Guidance.** The pipeline batches ``[uncond, cond]`` and mixes velocities as
  ``v_u + w (v_c - v_u)``; the unconditional input is the empty prompt ``""``. Because
  ``x0 = x_t - t v`` is affine in ``v``, mixing velocities equals mixing x0-predictions.
* **Latents.** ``decode`` undoes the pipeline's latent normalisation
  ``z = latents / scaling_factor + shift_factor`` before ``vae.decode``.

Memory: the transformer is the only per-role cost. With LoRA (``lora_rank``) a role trains a
peft adapter (diffusers' own SD3 LoRA recipe) over frozen base weights, and checkpoints
(``state_dict``) hold only the adapter, since the frozen base can be reloaded from the model it
came from. With ``share_base`` (the default where possible) the student's and critic's adapters
sit on the teacher's own transformer (:class:`AdapterHost`) instead of on copies of it: one
base in memory, the teacher being that base with adapters disabled.
"""

from gdmd.models.sd3.adapters import AdapterHost, LoRASpec, save_lora_file
from gdmd.models.sd3.common import SD3ConfigError, SD3LoadError
from gdmd.models.sd3.encoders import ModelRef, SD3Decoder, SD3SharedComponents
from gdmd.models.sd3.export import export_pipeline, student_scheduler_config
from gdmd.models.sd3.loading import build_sd3
from gdmd.models.sd3.model import SD3Model
from gdmd.models.sd3_config import DEFAULT_LORA_TARGETS, SD3Config

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "AdapterHost",
    "LoRASpec",
    "ModelRef",
    "SD3Config",
    "SD3ConfigError",
    "SD3Decoder",
    "SD3LoadError",
    "SD3Model",
    "SD3SharedComponents",
    "build_sd3",
    "export_pipeline",
    "save_lora_file",
    "student_scheduler_config",
]
