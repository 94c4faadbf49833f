"""Benchmark suites as Gymnasium environments, with the papers' settings (see :mod:`worldloom.envs.suites`).

``make_env`` (and so every command and ``run_agent``) takes these ids beside
Gymnasium's: ``dmc:<domain>-<task>[:pixels]`` and ``atari:<game>``.
"""

from worldloom.envs.factory import make_env
from worldloom.envs.suites import (
    AGENTS,
    ATARI_REFERENCE,
    DMC_REFERENCE,
    AtariSettings,
    DMCSettings,
    is_suite_id,
    make_suite_env,
    parse_suite_id,
    suite_settings,
)

__all__ = ["AGENTS", "ATARI_REFERENCE", "DMC_REFERENCE", "AtariSettings", "DMCSettings",
           "is_suite_id", "make_env", "make_suite_env", "parse_suite_id", "suite_settings"]
