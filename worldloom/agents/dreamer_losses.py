"""DreamerV3 behaviour learning: imagination, lambda returns, actor and critic losses.

Conventions: imagined trajectories are time first, ``[H+1, N, ...]`` with the
start state at index 0; ``rewards[h]``/``continues[h]`` belong to arriving at
state ``h``. Continues are the continue head's probabilities, whose
non-terminal target already folds in the discount ``1 - 1/333``; the weight of
imagined step ``h`` is ``prod(continues[0..h])``, the start state's own
continue included (a start at a terminal observation weighs almost nothing),
as the reference. Replayed windows are in the stream layout of
:mod:`worldloom.agents.replay`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from worldloom.agents.dreamer_networks import policy_entropy, policy_log_prob, policy_sample
from worldloom.agents.normalizers import PercentileState, percentile_normalizer
from worldloom.core.config import ConfigBase, require
from worldloom.core.types import LatentState
from worldloom.nn.functional import dreamer_bins, lambda_return, twohot_loss, twohot_mean

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class DreamerAgentConfig(ConfigBase):
    """Behaviour hyperparameters of the DreamerV3 agent (reference defaults)."""

    imag_horizon: int = 15
    """Imagination steps from every posterior state."""
    lam: float = 0.95
    """Lambda of the TD(lambda) returns."""
    actor_entropy: float = 3e-4
    """Entropy bonus of the REINFORCE actor."""
    slow_critic_rate: float = 0.02
    """EMA rate of the slow critic."""
    slow_critic_reg: float = 1.0
    """Weight of the critic's regulariser towards the slow critic."""
    retnorm_rate: float = 0.01
    """EMA rate of the 5th/95th return percentiles."""
    retnorm_limit: float = 1.0
    """Smallest return scale."""
    policy_scale: float = 1.0
    value_scale: float = 1.0
    repval_scale: float = 0.3
    """Scale of the critic loss on replayed sequences."""
    actor_layers: int = 3
    critic_layers: int = 3
    critic_bins: int = 255
    actor_outscale: float = 0.01

    def validate(self) -> None:
        require(self.imag_horizon >= 1, f"imag_horizon must be >= 1, got {self.imag_horizon}.")
        require(0.0 <= self.lam <= 1.0, f"lam must be in [0, 1], got {self.lam}.")


def imagine_with_policy(wm_fns, wm_params, actor_fn, start: LatentState, horizon: int, key, discrete: bool):
    """Roll the prior forward with actions sampled from the actor.

    Args:
        wm_fns: :class:`DreamerV3Functions`.
        actor_fn: ``actor_fn(features [N, F]) -> raw actor output``.
        start: States ``[N, ...]``.

    Returns:
        ``(states [H+1, N, ...], actions [H+1, N, A])``; ``actions[h]`` is taken in ``states[h]``.
    """
    keys = jax.random.split(key, horizon + 1)
    first_action = policy_sample(actor_fn(sg(start.features)), keys[0], discrete)

    def step(carry, step_key):
        state, action = carry
        img_key, act_key = jax.random.split(step_key)
        nxt = wm_fns.img_step(wm_params, state, action, img_key).core()
        nxt_action = policy_sample(actor_fn(sg(nxt.features)), act_key, discrete)
        return (nxt, nxt_action), (nxt, nxt_action)

    start = start.core()
    _, (states, actions) = jax.lax.scan(step, (start, first_action), keys[1:])
    states = jax.tree_util.tree_map(lambda s, x: jnp.concatenate([s[None], x], 0), start, states)
    return states, jnp.concatenate([first_action[None], actions], 0)


def replay_returns(rewards, is_last, is_terminal, boot, lam: float, discount: float):
    """Lambda returns along replayed steps (stream layout), the reference's ``repl_loss`` targets.

    Args:
        rewards: ``[B, T]`` reward that arrived with each row's observation.
        is_last, is_terminal: ``[B, T]`` flags of each row.
        boot: ``[B, T]`` imagined return of each row's posterior state.

    Returns:
        ``[B, T-1]`` returns of rows ``0..T-2``:
        ``R[t] = r[t+1] + live[t+1] * ((1 - c[t+1]) * boot[t+1] + c[t+1] * R[t+1])``
        with ``live = discount * (1 - is_terminal)``, ``c = lam * (1 - is_last)``
        and ``R[T-1] = boot[T-1]``. So the step into a terminal observation
        returns its reward; into the last observation of a truncated episode,
        its reward plus the discounted imagined return of that observation.
    """
    live = discount * (1.0 - is_terminal.astype(jnp.float32))
    cont = lam * (1.0 - is_last.astype(jnp.float32))

    def step(next_return, inputs):
        reward, live_t, cont_t, boot_t = inputs
        ret = reward + live_t * ((1.0 - cont_t) * boot_t + cont_t * next_return)
        return ret, ret

    swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    inputs = tuple(swap(x[:, 1:]) for x in (rewards, live, cont, boot))
    _, returns = jax.lax.scan(step, boot[:, -1], inputs, reverse=True)
    return swap(returns)


def behaviour_loss(cfg: DreamerAgentConfig, wm_fns, nets, params, slow_critic, retnorm: PercentileState,
                   post: LatentState, batch, key, discrete: bool):
    """Actor, critic and replay-critic losses from posterior starts ``[B, T, ...]``.

    ``batch`` holds the trained rows in stream layout: ``rewards``,
    ``is_last``, ``is_terminal`` ``[B, T]``. The replay critic reads the
    posterior features without a stop-gradient, so its loss also trains the
    world model (the reference's ``repval_grad``).

    Returns:
        ``(loss, metrics, new_retnorm)``.
    """
    actor_net, critic_net = nets
    bins = dreamer_bins(critic_net.bins)  # the critic's own, as the reference's value head has
    batch_size, length = post.batch_shape
    wm_params = sg(params["wm"])
    start = jax.tree_util.tree_map(lambda x: sg(x.reshape(batch_size * length, *x.shape[2:])), post)
    actor_sg = lambda f: actor_net.apply({"params": sg(params["actor"])}, f)  # noqa: E731
    states, actions = imagine_with_policy(wm_fns, wm_params, actor_sg, start, cfg.imag_horizon, key, discrete)
    # The start's features and the imagined steps' joined in one piece each: the [H+1] deter and
    # stoch arrays of ``states`` are then never built (XLA drops them), only the features.
    imagined = jnp.concatenate([states.deterministic[1:], states.stochastic[1:]], -1)
    features = sg(jnp.concatenate([start.features[None], imagined], 0))  # [H+1, N, F]
    # The start's reward enters no return: the reward head reads the imagined steps only.
    rewards = jnp.concatenate([jnp.zeros((1, imagined.shape[1])), wm_fns.reward(wm_params, sg(imagined))], 0)
    continues = wm_fns.continue_prob(wm_params, features)
    weight = sg(jnp.cumprod(continues, 0))

    critic_logits = critic_net.apply({"params": params["critic"]}, features)
    values = twohot_mean(critic_logits, bins)
    returns = lambda_return(rewards, sg(values), continues, cfg.lam)  # [H, N]
    normalizer = percentile_normalizer(cfg.retnorm_rate, limit=cfg.retnorm_limit)
    retnorm, _, scale = normalizer.update(retnorm, returns)
    advantage = sg((returns - values[:-1]) / scale)

    actor_raw = actor_net.apply({"params": params["actor"]}, features)[:-1]
    log_prob = policy_log_prob(actor_raw, sg(actions[:-1]), discrete)
    entropy = policy_entropy(actor_raw, discrete)
    policy_loss = (weight[:-1] * -(log_prob * advantage + cfg.actor_entropy * entropy)).mean()

    slow_values = sg(twohot_mean(critic_net.apply({"params": slow_critic}, features)[:-1], bins))
    value_terms = twohot_loss(critic_logits[:-1], (sg(returns), slow_values), bins, (1.0, cfg.slow_critic_reg))
    value_loss = (weight[:-1] * value_terms).mean()

    post_features = post.features
    replay_logits = critic_net.apply({"params": params["critic"]}, post_features)
    slow_replay = sg(twohot_mean(critic_net.apply({"params": slow_critic}, post_features), bins))
    discount = 1.0 - 1.0 / wm_fns.config.contdisc_horizon
    replay_target = replay_returns(batch["rewards"].astype(jnp.float32), batch["is_last"], batch["is_terminal"],
                                   returns[0].reshape(batch_size, length), cfg.lam, discount)
    repval_terms = twohot_loss(replay_logits[:, :-1], (sg(replay_target), slow_replay[:, :-1]), bins,
                               (1.0, cfg.slow_critic_reg))
    not_last = 1.0 - batch["is_last"][:, :-1].astype(jnp.float32)
    repval_loss = (not_last * repval_terms).mean()

    total = cfg.policy_scale * policy_loss + cfg.value_scale * value_loss + cfg.repval_scale * repval_loss
    metrics = {
        "loss/policy": policy_loss,
        "loss/value": value_loss,
        "loss/repval": repval_loss,
        "policy_entropy": entropy.mean(),
        "imag_return": returns.mean(),
        "imag_reward": rewards[1:].mean(),
        "return_scale": scale,
    }
    return total, metrics, retnorm
