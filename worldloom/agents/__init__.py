"""Agents that act with a world model: Dreamer actor-critic and TD-MPC2 planning."""

from worldloom.agents.dreamer import DreamerAgent
from worldloom.agents.dreamer_losses import DreamerAgentConfig
from worldloom.agents.loop import AgentRunConfig, evaluate, run_agent
from worldloom.agents.tdmpc2 import TDMPC2Agent

__all__ = ["AgentRunConfig", "DreamerAgent", "DreamerAgentConfig", "TDMPC2Agent", "evaluate", "run_agent"]
