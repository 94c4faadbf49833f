"""One resolver for both commands' settings: run file < flags typed < --set, for `worldloom train` as for
`worldloom agent` (agents.run_file.resolve_settings), read without running anything."""

import yaml

from worldloom.agents.run_file import resolve_run, resolve_settings
from worldloom.cli import _apply_train_file, _parser


def _place(values, parts, key, value):
    section, _, name = key.partition(".")
    if name:
        parts[section][name] = value
    else:
        values[key] = value


def test_a_run_file_then_flags_then_sets_in_that_order(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"steps": 10, "seed": 1, "model": {"deter": 64, "units": 8}}))
    values, parts = resolve_settings(path, ("steps", "seed", "model"), ("model",), {"seed": 2},
                                     ["steps=30", "model.units=16"], _place)
    assert values == {"steps": 30, "seed": 2} and parts == {"model": {"deter": 64, "units": 16}}
    values, parts = resolve_settings(None, ("steps", "model"), ("model",), {}, [("model.deter", 8)], _place)
    assert values == {} and parts == {"model": {"deter": 8}}


def _train_args(argv):
    args = _parser().parse_args(["train", *argv])
    args.argv_tail = list(argv)
    _apply_train_file(args)
    return args


def test_train_reads_its_run_file_and_sets_as_the_agent_does(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"steps": 40, "batch_size": 4, "world_model": {"deter": 64},
                                    "training": {"eval_fraction": 0.2}}))
    args = _train_args(["--config", str(path), "--batch-size", "8", "--set", "units=16", "--set", "max_in_flight=3"])
    assert (args.steps, args.batch_size) == (40, 8)  # the file's value, and the flag typed over the file's
    assert dict(args.overrides) == {"deter": 64, "units": 16}  # world-model fields
    assert args.training == {"eval_fraction": 0.2, "max_in_flight": 3}  # TrainingConfig fields
    # Without a run file the same path: --set splits into model and training fields; one with a flag sets the flag.
    args = _train_args(["--set", "units=16", "--set", "seed=3", "--set", "grad_clip=2.0"])
    assert dict(args.overrides) == {"units": 16} and args.training == {"grad_clip": 2.0} and args.seed == 3


def test_the_agent_resolves_through_the_same_path(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"env": "CartPole-v1", "total_steps": 500, "world_model": {"deter": 64}}))
    config, model = resolve_run(path, {"seed": 4}, ["total_steps=700", "units=16"])
    assert (config.total_steps, config.seed) == (700, 4)
    assert {"deter": 64, "units": 16}.items() <= model.items()
