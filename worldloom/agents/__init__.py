"""Agents that act with a world model: Dreamer actor-critic and TD-MPC2 planning."""

from worldloom.agents.dreamer import DreamerAgent
from worldloom.agents.dreamer_losses import DreamerAgentConfig

__all__ = ["DreamerAgent", "DreamerAgentConfig"]
