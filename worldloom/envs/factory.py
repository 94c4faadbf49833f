"""``make_env``: one environment from a Gymnasium id or a suite id, the one factory every run uses."""

from __future__ import annotations

from typing import Any

from worldloom.core.config import close_matches
from worldloom.core.errors import ConfigError


def check_render_mode(render_mode, name: str = "render_mode") -> None:
    """ConfigError unless ``render_mode`` is a string (``"rgb_array"``, ...) or None."""
    if render_mode is not None and not isinstance(render_mode, str):
        raise ConfigError(f"{name}: expected a string such as 'rgb_array' (or None), got {render_mode!r} "
                          f"({type(render_mode).__name__}).")


def make_env(env_id: str, agent: str | None = None, **kwargs: Any):
    """``gymnasium.make(env_id, **kwargs)``, or a suite task (``dmc:...``, ``atari:...``).

    Args:
        env_id: A Gymnasium id (``"CartPole-v1"``) or a suite id
            (``"dmc:cartpole-balance:pixels"``, ``"atari:pong"``; see
            :mod:`worldloom.envs.suites`).
        agent: For a suite id, whose reference settings to use (``"dreamerv3"``,
            the default, or ``"tdmpc2"``); ignored for Gymnasium ids.
        **kwargs: ``gymnasium.make`` keywords, or for a suite id its settings
            and ``render_mode``.

    Raises:
        ConfigError: naming the id, the reason and close registered ids; a ``render_mode`` that is not a string.
    """
    import gymnasium as gym

    from worldloom.envs.suites import is_suite_id, make_suite_env

    if not isinstance(env_id, str):
        raise ConfigError(f"env: expected a Gymnasium env id such as 'CartPole-v1', got {type(env_id).__name__}.")
    check_render_mode(kwargs.get("render_mode"))
    if is_suite_id(env_id):
        return make_suite_env(env_id, agent or "dreamerv3", **kwargs)
    try:
        return gym.make(env_id, **kwargs)
    except (ImportError, gym.error.DependencyNotInstalled) as err:
        if env_id not in gym.registry:  # an id of a module that is not there (or not importable)
            raise ConfigError(f"Cannot make the Gymnasium environment {env_id!r}: {err}."
                              f"{close_matches(env_id, gym.registry.keys())}") from err
        # a registered task whose simulator is not installed
        needs = f"the module {err.name!r}" if getattr(err, "name", None) else "a package"
        raise ConfigError(f"Cannot make the Gymnasium environment {env_id!r}: it needs {needs}, which is not "
                          f"installed ({err}). {_INSTALL_HINT}") from err
    except (gym.error.Error, TypeError) as err:  # TypeError: a bad keyword
        known = env_id.rpartition(":")[2] in gym.registry  # a registered id (or module:Id): no other names
        hint = "" if known else close_matches(env_id, gym.registry.keys())
        raise ConfigError(f"Cannot make the Gymnasium environment {env_id!r}: {err}.{hint}") from err


_INSTALL_HINT = ('pip install -e ".[suites]" brings what Gymnasium\'s MuJoCo and Box2D tasks need '
                 '(gymnasium[mujoco,box2d]), dm_control and ale-py.')
