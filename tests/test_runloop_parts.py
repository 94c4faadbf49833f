"""The run loop's parts (worldloom.training.runloop) on their own, without a model: the learner's dispatches,
prefetch and guard, the evaluator's schedule, the checkpointer; and the import direction below both loops."""

import ast
import threading
from pathlib import Path

import numpy as np
import pytest

import worldloom
from worldloom.core.errors import TrainingError
from worldloom.training.guard import SKIPPED, NonFiniteGuard
from worldloom.training.runloop import Checkpointer, Evaluator, Learner, owed_plan


def test_owed_updates_run_k_at_a_time_then_one_at_a_time():
    assert owed_plan(5, 23, 10) == [(5, 10), (15, 10), (25, 1), (26, 1), (27, 1)]
    assert owed_plan(0, 3, None) == [(0, 1), (1, 1), (2, 1)]
    assert owed_plan(7, 0, 10) == []


def _counting_learner(bad=(), mode="stop", max_in_flight=None):
    """A learner whose state counts updates; update numbers in ``bad`` come back flagged as skipped."""

    def dispatch(state, batches, start, count):
        flags = np.array([float(start + i + 1 in bad) for i in range(count)])
        return state + count, {"loss": np.asarray(batches, float), SKIPPED: flags}

    learner = Learner(dispatch, NonFiniteGuard(mode, 2), max_in_flight=max_in_flight)
    learner.state = 0
    return learner


def test_the_learner_samples_the_next_dispatch_while_the_current_one_runs():
    sampled_second = threading.Event()
    threads = set()

    def sample(start, count):
        threads.add(threading.get_ident())
        if start == 2:
            sampled_second.set()
        return np.arange(start, start + count), f"note {start}"

    learner = _counting_learner()
    inner = learner.dispatch

    def dispatch(state, batches, start, count):
        if start == 0:  # the first program "runs" until the next batches are ready
            assert sampled_second.wait(10), "the next dispatch's batches were not sampled during this one"
        return inner(state, batches, start, count)

    learner.dispatch = dispatch
    reports = []
    ran = learner.run([(0, 2), (2, 2), (4, 1)], sample, lambda *args: reports.append(args), prefetch=2)
    assert ran == 5 and learner.state == 5 and learner.step == 5
    assert threading.get_ident() not in threads  # sampled on the prefetch thread
    assert [(start, count, note) for start, count, _, _, note in reports] == [(0, 2, "note 0"), (2, 2, "note 2"),
                                                                              (4, 1, "note 4")]
    assert reports[1][2]["loss"].tolist() == [2.0, 3.0]


def test_the_learner_stops_where_asked_and_drains_at_sync_steps():
    finished = []
    learner = _counting_learner(max_in_flight=10)
    plan = [(i, 1) for i in range(6)]
    learner.run(plan, lambda start, count: ([start], None), lambda start, *rest: finished.append(start),
                prefetch=0, sync=lambda step: step == 2, after=lambda step: step == 4)
    # Drained at step 2 (updates 0 and 1 reported); stopped after step 4, its queued dispatches reported at the end.
    assert learner.step == 4 and finished == [0, 1, 2, 3]


def test_a_non_finite_update_under_stop_reports_only_those_before_and_drops_a_state_run_past_it():
    reported = []
    learner = _counting_learner(bad={4})
    with pytest.raises(TrainingError, match="Step 4 is not finite"):
        learner.run([(0, 2), (2, 2), (4, 2)], lambda start, count: (np.zeros(count), None),
                    lambda start, count, *rest: reported.append((start, count)), prefetch=0)
    assert reported == [(0, 2), (2, 1)]
    assert learner.step == 3 and learner.state is None  # the dispatch after it ran from its state


def test_skipped_updates_under_skip_are_counted_until_too_many_in_a_row():
    learner = _counting_learner(bad={2, 5, 6}, mode="skip")
    learner.run([(0, 4), (4, 4)], lambda start, count: (np.zeros(count), None), lambda *args: None, prefetch=0)
    assert learner.guard.skipped == 3 and learner.state == 8
    learner = _counting_learner(bad={1, 2, 3}, mode="skip")
    with pytest.raises(TrainingError, match="3 consecutive updates"):
        learner.run([(0, 4)], lambda start, count: (np.zeros(count), None), lambda *args: None, prefetch=0)


def test_the_evaluator_runs_every_n_steps_at_the_end_and_after_a_resume():
    seen = []
    evaluator = Evaluator(50, lambda step: seen.append(step), done=0)
    for step in (30, 52, 60, 100, 130):
        evaluator(step, final=step == 130)
    assert seen == [52, 100, 130]
    seen.clear()
    resumed = Evaluator(50, lambda step: seen.append(step) or step >= 150, done=120)
    assert [resumed(step) for step in (140, 150)] == [False, True] and seen == [150]
    assert resumed(150, final=True) is False and seen == [150]  # no second evaluation of the same step


def test_the_checkpointer_writes_what_it_holds_on_the_writing_process():
    written = []
    cp = Checkpointer(lambda **things: written.append(things) or "here")
    cp.agent, cp.replay = "the agent", "the replay"
    assert cp.save("final") == "here" and written == [{"agent": "the agent", "replay": "the replay"}]
    assert cp.agent == "the agent"
    assert Checkpointer(lambda **things: written.append(things), primary=False).save(1) is None and len(written) == 1


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_run_loop_parts_sit_below_both_loops():
    training = Path(worldloom.__file__).parent / "training"
    upward = {str(path.name): sorted(name for name in _imports(path) if name.startswith(("worldloom.agents",
                                                                                         "worldloom.cli")))
              for path in training.glob("*.py")}
    assert {name: found for name, found in upward.items() if found} == {}
