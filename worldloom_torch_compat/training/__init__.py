"""Training for torch-facing models: worldloom's jitted JAX trainer, torch at the edges.

``train``/``Trainer`` take the ``torch.nn.Module`` from
``worldloom_torch_compat.create_world_model`` and return it with the trained
weights; ``ReplayBuffer.sample(..., device=...)`` returns torch tensors.
The original's paths are here too: ``training.config``, ``training.trainer``,
``training.data`` (with ``TrajectoryDataset``) and ``training.callbacks``.

Example:
    >>> from worldloom_torch_compat import create_world_model
    >>> from worldloom_torch_compat.training import train
    >>> from worldloom_torch_compat.training.data import create_random_buffer
    >>> model = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="cpu")
    >>> buffer = create_random_buffer(10_000, (4,), 2, num_episodes=20, episode_length=100)
    >>> model = train(model, buffer, total_steps=100, device="cpu")
"""

from worldloom_torch_compat.training import callbacks, data
from worldloom_torch_compat.training._buffer import ReplayBuffer
from worldloom_torch_compat.training.callbacks import Callback, CheckpointCallback, LoggingCallback
from worldloom_torch_compat.training.config import TrainingConfig
from worldloom_torch_compat.training.data import TrajectoryDataset
from worldloom_torch_compat.training.trainer import Trainer, train

__all__ = ["Callback", "CheckpointCallback", "LoggingCallback", "ReplayBuffer", "Trainer", "TrainingConfig",
           "TrajectoryDataset", "callbacks", "data", "train"]
