"""Contract checkers: hold a reward, target strategy or diffusion model to its contract.

Each checker drives a component the way gdmd's training loop does and fails with an
:class:`AssertionError` whose message names the component (``reward my_pkg.MyReward``) and
what it got wrong, so a plugin's tests catch a broken contract before a training run does::

    from gdmd.testing import assert_reward_contract

    def test_reward_contract(gdmd_build_context):
        assert_reward_contract(build(MyRewardConfig(), gdmd_build_context))

The contracts are the protocols of :mod:`gdmd.interfaces`; the checks here are the ones a
component can get wrong while still looking right in a quick manual test (batch mates that
leak into a score, a target that keeps its graph, global randomness). They use small inputs
and finish in well under a second for small components.

One module per contract: :mod:`~gdmd.testing.contracts.reward`,
:mod:`~gdmd.testing.contracts.target` and :mod:`~gdmd.testing.contracts.model`, with what
they share in :mod:`~gdmd.testing.contracts.common`.

A component that raises while being checked fails with an :class:`AssertionError` naming it,
chained to the original exception. Wrong arguments to a checker raise :class:`ValueError`.
"""

from __future__ import annotations

from gdmd.testing.contracts.common import CONTRACT_PROMPTS
from gdmd.testing.contracts.model import assert_model_contract
from gdmd.testing.contracts.reward import assert_reward_contract
from gdmd.testing.contracts.target import assert_target_contract

__all__ = [
    "CONTRACT_PROMPTS",
    "assert_model_contract",
    "assert_reward_contract",
    "assert_target_contract",
]
