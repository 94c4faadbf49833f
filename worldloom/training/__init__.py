"""Training: replay buffer, configuration, trainer, callbacks and data utilities.

Example:
    >>> from worldloom import create_world_model
    >>> from worldloom.training import train
    >>> from worldloom.training.data import create_random_buffer
    >>> model = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2)
    >>> buffer = create_random_buffer(10_000, (4,), 2, num_episodes=20, episode_length=100)
    >>> model = train(model, buffer, total_steps=100, device="cpu")
"""

from worldloom.training import callbacks, data
from worldloom.training._buffer import ReplayBuffer
from worldloom.training._config import TrainingConfig
from worldloom.training._trainer import Trainer, train

__all__ = ["ReplayBuffer", "Trainer", "TrainingConfig", "callbacks", "data", "train"]
