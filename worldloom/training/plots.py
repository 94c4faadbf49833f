"""Learning curves of runs against the papers: what ``worldloom plot RUN [RUN ...]`` draws.

Runs of the same environment and algorithm are seeds of one curve: their mean
evaluation return, with the range from the lowest to the highest seed shaded.
Each curve is drawn on the axis its reference publishes on:

- DMC (``dmc:...``): frames, agent steps x the run's action repeat (its
  ``env_options``, else its reference's, :data:`worldloom.envs.DMC_REFERENCE`);
- Atari (``atari:...``): frames, agent steps x the frame skip;
- a Gymnasium id: environment steps.

Where :mod:`worldloom.training.published` holds DreamerV3's published
returns for the task (DMC vision or proprio, Atari 100k), those within the
runs' range (or else the first) are drawn beside a DreamerV3 curve. A run's evaluations are read from its
``summary.json`` (a finished run) or else its ``metrics.jsonl`` (a run still
going, or interrupted).

Example:
    >>> plot_runs(["runs/cartpole-seed0", "runs/cartpole-seed1"], "curves.png")
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from worldloom.core.archives import as_path
from worldloom.core.errors import CheckpointError, ConfigError, DataError
from worldloom.core.files import remove_path, temp_path
from worldloom.core.persist import writing
from worldloom.training.published import ATARI, ATARI_100K_FRAMES, DMC_PROPRIO, DMC_VISION

# Formats matplotlib lists but a plot is not written in: PGF needs LaTeX, AVIF a Pillow built with it, and raw/rgba
# are headerless pixels.
_NOT_WRITTEN = ("avif", "pgf", "raw", "rgba")


def figure_formats() -> list[str]:
    """The suffixes (without the dot) a plot may be written as: matplotlib's formats but those of ``_NOT_WRITTEN``."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(set(FigureCanvasBase.get_supported_filetypes()) - set(_NOT_WRITTEN))


def check_figure_path(path, name: str = "out", *, make_parent: bool = False) -> Path:
    """``path`` as a ``Path`` if a plot can be written there, checked before the plot is drawn.

    A plot is written in the format its suffix names (``.png``, ``.pdf``,
    ``.svg``, ...; PNG without a suffix). Its directory must exist, unless
    ``make_parent`` (then :func:`save_figure` makes it; only a file in the way
    is refused).

    Raises:
        ConfigError: not a path, a suffix matplotlib does not write, a
            directory, or a missing parent directory (or a file in its place).
    """
    path = as_path(path, name, "the path of an image file such as 'plot.png'")
    suffix = path.suffix.lower().lstrip(".")
    formats = figure_formats()
    if suffix and suffix not in formats:
        raise ConfigError(f"{name}: {str(path)!r}: expected a suffix matplotlib writes "
                          f"({', '.join('.' + f for f in formats)}; none for PNG), got {path.suffix!r}.")
    if path.is_dir():
        raise ConfigError(f"{name}: {str(path)!r} is a directory: expected the name of an image file, such as "
                          f"{str(path / 'plot.png')!r}.")
    parent = path.parent
    while make_parent and not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent  # the nearest existing ancestor must be a directory
    if not parent.is_dir():
        got = "a file" if os.path.lexists(parent) else "no such directory"
        raise ConfigError(f"{name}: cannot write {str(path)!r}: expected an existing directory to write it in, got "
                          f"{got} at {str(parent)!r}.")
    return path


def save_figure(figure, path: Path, what: str = "plot") -> Path:
    """Write ``figure`` to ``path`` (checked by :func:`check_figure_path`) in the format its suffix names.

    It is written under a unique temporary name beside ``path``
    (:func:`worldloom.core.files.temp_path`), then renamed into place; a
    failed write removes it, and what was at ``path`` stays as it was.

    Raises:
        CheckpointError: the write failed (naming ``path`` and the cause).
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with writing(path, what):
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(tmp, format=path.suffix.lower().lstrip(".") or "png", dpi=100)
            os.replace(tmp, path)
    finally:
        remove_path(tmp)
    return path


def run_kind(config) -> str | None:
    """Which command wrote a run file (a ``config.yaml`` read as a dict): ``"agent"`` (it names ``algo``),
    ``"train"`` (it has a ``training`` section), or None (neither: not a worldloom run's)."""
    if not isinstance(config, dict):
        return None
    return "agent" if "algo" in config else "train" if "training" in config else None


def read_agent_run(run_dir) -> dict:
    """The ``config.yaml`` of a ``worldloom agent`` run directory, as a dict holding at least ``env`` and ``algo``.

    Raises:
        CheckpointError: no readable ``config.yaml`` there, or one of another kind of run (``worldloom train``'s).
    """
    import yaml

    from worldloom.core.errors import CheckpointError

    path = Path(run_dir) / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CheckpointError(f"Expected a run directory of `worldloom agent` with config.yaml, got "
                              f"{str(run_dir)!r}: {err}") from err
    missing = [key for key in ("env", "algo") if not isinstance(config, dict) or key not in config]
    if missing:
        kind = " (a run of `worldloom train`, whose model `worldloom imagine RUN` shows)" if run_kind(
            config) == "train" else ""
        raise CheckpointError(f"Expected a run directory of `worldloom agent`, whose config.yaml names env and "
                              f"algo, got {str(run_dir)!r}, whose config.yaml has no {' or '.join(missing)}{kind}.")
    return config


def read_run(run_dir: str | os.PathLike) -> dict:
    """A ``worldloom agent`` run directory's ``{"env", "algo", "seed", "env_options", "eval": [(step, return)]}``.

    Raises:
        CheckpointError: no readable ``config.yaml``, or no evaluations in ``summary.json`` or ``metrics.jsonl``.
    """
    run_dir = Path(run_dir)
    config = read_agent_run(run_dir)
    try:
        run = {"env": str(config["env"]), "algo": str(config["algo"]), "seed": config.get("seed"),
               "env_options": dict(config.get("env_options") or {}), "dir": str(run_dir)}
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{run_dir / 'config.yaml'}: expected env_options to be a mapping, got "
                              f"{config.get('env_options')!r}.") from err
    run["eval"] = _evaluations(run_dir)
    if not run["eval"]:
        raise CheckpointError(f"{run_dir}: expected evaluation returns in summary.json or metrics.jsonl "
                              "(eval/return), found none: the run has not evaluated yet.")
    return run


def _evaluations(run_dir: Path) -> list[tuple[int, float]]:
    """``(env_step, mean return)`` of each evaluation: summary.json's, else metrics.jsonl's ``eval/return``."""
    try:
        return [(int(step), float(value)) for step, value, *_ in json.loads((run_dir / "summary.json").read_text())
                ["eval"]]
    except (OSError, ValueError, TypeError, KeyError):
        pass
    points = []
    try:
        with open(run_dir / "metrics.jsonl", encoding="utf-8") as file:
            for line in file:
                try:
                    row = json.loads(line)
                except ValueError:  # a line cut short by a killed run
                    continue
                if isinstance(row, dict) and row.get("eval/return") is not None:
                    points.append((int(row["step"]), float(row["eval/return"])))
    except OSError:
        return []
    return points


def x_axis(run: dict) -> tuple[int, str]:
    """``(units per agent step, axis label)`` of a run: frames for DMC and Atari, environment steps otherwise."""
    from worldloom.envs.suites import is_suite_id, parse_suite_id, suite_settings

    if not is_suite_id(run["env"]):
        return 1, "environment steps"
    suite, _ = parse_suite_id(run["env"])
    repeat = int(suite_settings(run["env"], run["algo"], **run["env_options"]).repeat)
    what = "action repeat" if suite == "dmc" else "frame skip"
    return repeat, f"frames (agent steps x {what})"


def published_points(env: str, algo: str) -> tuple[list[tuple[int, float]], str] | None:
    """DreamerV3's published returns by frames for ``env``, and their label; None where none is held."""
    from worldloom.envs.suites import is_suite_id, parse_suite_id

    if algo != "dreamerv3" or not is_suite_id(env):
        return None
    suite, fields = parse_suite_id(env)
    if suite == "atari":
        if fields["game"] not in ATARI:
            return None
        return [(ATARI_100K_FRAMES, ATARI[fields["game"]][2])], "DreamerV3 published (Atari 100k, 5 seeds)"
    table, kind = (DMC_VISION, "vision") if fields["pixels"] else (DMC_PROPRIO, "proprio")
    points = table.get(f"{fields['domain']}-{fields['task']}")
    if not points:
        return None
    return sorted(points.items()), f"DreamerV3 published (DMC {kind})"


def seed_curve(curves: list[list[tuple[float, float]]]) -> tuple[list[float], list[float], list[float], list[float]]:
    """``(x, mean, low, high)`` over seeds' ``(x, return)`` curves, at every x any seed evaluated.

    A seed's value at ``x`` is its last evaluation at or before ``x``; seeds
    that had not evaluated by then are left out there.
    """
    xs = sorted({x for curve in curves for x, _ in curve})
    mean, low, high = [], [], []
    for x in xs:
        values = [passed[-1] for passed in ([r for at, r in curve if at <= x] for curve in curves) if passed]
        mean.append(sum(values) / len(values))
        low.append(min(values))
        high.append(max(values))
    return xs, mean, low, high


def plot_runs(run_dirs, path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw the return curves of ``run_dirs`` (mean and range over seeds) beside the published ones.

    One panel per x-axis kind (frames, environment steps). The image is
    written in the format ``path``'s suffix names (PNG, PDF, SVG, ...; see
    :func:`check_figure_path`), under a temporary name and renamed; its
    directory is made when missing.

    Returns:
        ``path``.

    Raises:
        CheckpointError: a directory that is not a run with evaluations, or a failed write.
        ConfigError: ``path`` is a directory, has a suffix matplotlib does not write, or a file is in the way
            of its directory (said before any run is read).
        DataError: no run directories given.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    path = check_figure_path(path, make_parent=True)
    runs = [read_run(run_dir) for run_dir in run_dirs]
    if not runs:
        raise DataError("worldloom plot: expected at least one run directory, got none.")
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["env"], run["algo"]), []).append(run)
    axes_of: dict[str, list] = {}
    for (env, algo), group in groups.items():
        axes_of.setdefault(x_axis(group[0])[1], []).append((env, algo, group))
    figure, axes = plt.subplots(1, len(axes_of), figsize=(8 * len(axes_of), 4.2), squeeze=False)
    for axis, (label, curves) in zip(axes[0], axes_of.items()):
        for index, (env, algo, group) in enumerate(curves):
            color = f"C{index % 10}"
            seeds = [[(step * x_axis(run)[0], ret) for step, ret in run["eval"]] for run in group]
            xs, mean, low, high = seed_curve(seeds)
            count = len(group)
            axis.plot(xs, mean, "o-", color=color, markersize=3,
                      label=f"{algo} on {env} ({count} seed{'s' if count != 1 else ''}, mean)")
            if count > 1:
                axis.fill_between(xs, low, high, color=color, alpha=0.2)
            published = published_points(env, algo)
            if published is not None:
                points, name = published
                shown = [point for point in points if point[0] <= xs[-1] * 1.05] or points[:1]  # the runs' range
                points = shown
                axis.plot([x for x, _ in points], [y for _, y in points], "s--", color=color, alpha=0.7,
                          label=f"{name}: {env}")
        axis.set_xlabel(label)
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value / 1000:g}k" if value else "0"))
        axis.set_ylabel("evaluation return")
        axis.grid(alpha=0.3)
        axis.legend(loc="best", fontsize=8)
    figure.suptitle(title or "Evaluation returns (shaded: lowest to highest seed)", fontsize=10)
    figure.tight_layout()
    try:
        return save_figure(figure, path, "plot")
    finally:
        plt.close(figure)


__all__ = ["check_figure_path", "figure_formats", "plot_runs", "published_points", "read_agent_run", "read_run",
           "run_kind", "save_figure", "seed_curve", "x_axis"]
