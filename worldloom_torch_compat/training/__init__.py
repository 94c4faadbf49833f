"""Training for torch-facing models: worldloom's jitted JAX trainer, torch at the edges.

``train``/``Trainer`` take the ``torch.nn.Module`` from
``worldloom_torch_compat.create_world_model`` and return it with the trained
weights; ``ReplayBuffer.sample(..., device=...)`` returns torch tensors.

Example:
    >>> from worldloom_torch_compat import create_world_model
    >>> from worldloom_torch_compat.training import train
    >>> from worldloom_torch_compat.training.data import create_random_buffer
    >>> model = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="cpu")
    >>> buffer = create_random_buffer(10_000, (4,), 2, num_episodes=20, episode_length=100)
    >>> model = train(model, buffer, total_steps=100, device="cpu")
"""

from worldloom.training import TrainingConfig
from worldloom_torch_compat.training import callbacks, data
from worldloom_torch_compat.training._buffer import ReplayBuffer
from worldloom_torch_compat.training._trainer import Trainer, train

__all__ = ["ReplayBuffer", "Trainer", "TrainingConfig", "callbacks", "data", "train"]
