"""The agent tests' tiny models and the programs they share.

Compiling is most of what an agent test costs (a DreamerV3 or TD-MPC2 update is
several seconds of XLA, an MPPI plan a few), and the session's persistent
compilation cache (``conftest.py``) shares a program between tests and files
only when it is the same program: the same model config, optimiser settings,
batch shapes and jit options. So the agent tests build their models here, on
CartPole's and Pendulum's shapes, and a test that calls an update itself builds
it as ``run_agent`` does (:func:`run_settings`, :func:`jit_update`), on batches of
``run_agent``'s shapes: it then runs the program a short run of the same model compiles.
"""

import jax

from worldloom import create_world_model
from worldloom.agents import AgentRunConfig, DreamerAgent
from worldloom.agents.loop import DEFAULTS
from worldloom.models.base import OptimizerSettings

DREAMER_TINY = dict(deter=64, hidden=32, units=32, classes=4, stoch=4)
TDMPC_TINY = dict(enc_dim=32, mlp_dim=32, latent_dim=16, num_q=2, num_samples=32, num_elites=8, num_pi_trajs=4,
                  iterations=2)
# The windows of the DreamerV3 runs (AgentRunConfig batch_size / sequence_length) and of TD-MPC2's on Pendulum.
DREAMER_BATCH, DREAMER_LENGTH = 2, 8
TDMPC_BATCH, TDMPC_LENGTH = 8, DEFAULTS["tdmpc2"]["sequence_length"]


def dreamer_model(seed=0, **changes):
    """A tiny DreamerV3 world model on CartPole's shapes (4 observations, 2 discrete actions)."""
    return create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, action_type="discrete", seed=seed,
                              **{**DREAMER_TINY, **changes})


def dreamer_agent(seed=0, config=None):
    """A :class:`DreamerAgent` as ``run_agent`` makes it on CartPole with ``DREAMER_TINY``."""
    return DreamerAgent(dreamer_model(seed), config, seed=seed)


def pendulum_tdmpc(**changes):
    """A tiny TD-MPC2 model as ``run_agent`` makes it on Pendulum (its 200-step limit sets the discount)."""
    return create_world_model("tdmpc2:1m", obs_shape=(3,), action_dim=1, action_type="continuous",
                              episode_length=200, episodic=False, **{**TDMPC_TINY, **changes})


def run_settings(algo, **changes):
    """The optimiser settings ``run_agent`` trains ``algo`` with on CartPole (DreamerV3) or Pendulum (TD-MPC2).

    As the run resolves them: DreamerV3 stacks the ``quick`` preset over
    AgentRunConfig's defaults there (its learning rate and warm-up).
    """
    config = AgentRunConfig(env="CartPole-v1" if algo == "dreamerv3" else "Pendulum-v1", algo=algo)
    values = {name: config.resolved(name) for name in ("learning_rate", "grad_clip", "warmup_steps")}
    return OptimizerSettings(**{**values, **changes})


def jit_update(update):
    """``update.step`` jitted as ``run_agent`` jits it (one process: the train state donated)."""
    return jax.jit(update.step, donate_argnums=0)
