"""DreamerV3's world model learns a pattern and imagines its rewards: a learning check, pass or fail.

    python -m benchmarks.learning_checks            # 300 updates, about 20 s on 2 CPU cores
    python -m benchmarks.learning_checks --json out.json

Episodes of 8 steps show a one-hot phase ``t % 4``; the reward is the
action on phase 3 and 0 otherwise; the last step ends the episode. A tiny
DreamerV3 model (``dreamerv3:size1m`` with 64 deterministic and 4x4 stochastic
units) trains 300 updates of 16 episodes as one scanned program, then imagines
7 steps from posteriors after 2 observed steps, under the episodes' own actions.

Checks (the exit status is 1 when one fails):

- the mean loss of the last 20 updates is below half that of the first 5;
- the imagined rewards' mean absolute error is below 0.35 x the mean absolute
  true reward (a model that learned nothing predicts about 0 and scores 1.0);
- the last imagined step (the episode's terminal action) has a mean continue
  probability below 0.3, the steps before it above 0.8.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from worldloom import create_world_model
from worldloom.models.base import OptimizerSettings

TINY = dict(deter=64, hidden=32, units=32, classes=4, stoch=4, depth=2)


def pattern_episodes(rng: np.random.Generator, episodes: int, length: int = 8) -> dict:
    """``[episodes, length, ...]``: obs = one-hot phase (t % 4); reward = action on phase 3 else 0; terminal last."""
    t = np.arange(length)
    obs = np.broadcast_to(np.eye(4, dtype=np.float32)[t % 4], (episodes, length, 4)).copy()
    actions = rng.uniform(-1, 1, size=(episodes, length, 1)).astype(np.float32)
    rewards = np.where(t % 4 == 3, actions[..., 0], 0.0).astype(np.float32)
    continues = np.ones((episodes, length), np.float32)
    continues[:, -1] = 0.0
    is_first = np.zeros((episodes, length), bool)
    is_first[:, 0] = True
    return dict(obs=obs, actions=actions, rewards=rewards, continues=continues, is_first=is_first)


def dreamer_pattern(updates: int = 300, seed: int = 0) -> dict:
    """Train and imagine as the module docstring says; the figures and each check's outcome."""
    rng = np.random.default_rng(seed)
    model = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=1, seed=seed, **TINY)
    update = model.make_update(OptimizerSettings(learning_rate=3e-3))
    batches = [pattern_episodes(rng, 16) for _ in range(updates)]
    batches = {name: np.stack([b[name] for b in batches]) for name in batches[0]}  # [updates, B, T, ...]
    keys = jax.random.split(jax.random.PRNGKey(seed), updates)

    @jax.jit
    def train(state):  # the updates as one program
        def body(state, inputs):
            batch, key = inputs
            state, metrics = update.step(state, batch, key)
            return state, metrics["loss"]

        return jax.lax.scan(body, state, (batches, keys))

    state, losses = train(update.init(model.params))
    losses = np.asarray(losses)
    model.load_params(update.params(state)).eval()
    data = pattern_episodes(np.random.default_rng(seed + 7), 32)
    post = model.observe_sequence(data["obs"][:, :2], data["actions"][:, :2], is_first=data["is_first"][:, :2])
    actions = jnp.swapaxes(jnp.asarray(data["actions"][:, 1:]), 0, 1)  # [7, B, 1]
    traj = model.imagine(post[:, 1], actions)
    true_rewards = data["rewards"][:, 1:].T
    result = {
        "first_loss": float(np.mean(losses[:5])), "last_loss": float(np.mean(losses[-20:])),
        "reward_error": float(jnp.mean(jnp.abs(traj.rewards - true_rewards))),
        "reward_scale": float(np.mean(np.abs(true_rewards))),
        "terminal_continue": float(jnp.mean(traj.continues[-1])),
        "earlier_continue": float(jnp.mean(traj.continues[:-1])),
    }
    result["checks"] = {
        "loss halves": result["last_loss"] < 0.5 * result["first_loss"],
        "rewards imagined": result["reward_error"] < 0.35 * result["reward_scale"],
        "terminal step predicted": result["terminal_continue"] < 0.3,
        "other steps continue": result["earlier_continue"] > 0.8,
    }
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures and checks to this file")
    args = parser.parse_args(argv)
    result = dreamer_pattern(args.updates, args.seed)
    print(f"loss {result['first_loss']:.3f} (first 5) -> {result['last_loss']:.3f} (last 20); imagined reward "
          f"error {result['reward_error']:.3f} against mean |reward| {result['reward_scale']:.3f}; continue "
          f"{result['terminal_continue']:.2f} at the terminal step, {result['earlier_continue']:.2f} before it")
    for name, passed in result["checks"].items():
        print(f"  {'pass' if passed else 'FAIL'}  {name}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
