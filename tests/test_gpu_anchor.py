"""benchmarks.gpu_anchor: the side-by-side run end to end on the CPU with tiny configs.

The official code lives outside the repository (``.scratch/official``) and is
absent here, as in CI: one run points the DreamerV3 side at a missing folder
and the TD-MPC2 sides at a checkout that fails on import, so worldloom's side
runs alone and both ways an official side can be unavailable are reported.
"""

import contextlib
import io
import json

import pytest

from benchmarks import gpu_anchor

TINY_CASES = gpu_anchor.TINY_CASES
# The run's cases: a DreamerV3 update (bf16) and a TD-MPC2 plan, the cheapest to compile of each family.
RUN_CASES = ["dreamer-agent:size1m:vector", "tdmpc2-plan:1m"]


@pytest.fixture(scope="module")
def anchor_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("anchor")
    official = folder / "official"
    broken = official / "tdmpc2" / "tdmpc2"
    broken.mkdir(parents=True)
    (broken / "tdmpc2.py").write_text("raise ImportError('no tensordict here')\n")
    (official / "tdmpc2" / "COMMIT").write_text("0123456789abcdef\n")
    out = folder / "anchor.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.MonkeyPatch.context() as patch:
        # main sets it for its workers; afterwards this process has its own value (or none) again
        patch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
        code = gpu_anchor.main(["--tiny", "--cases", *RUN_CASES, "--official", str(official),
                                "--site", str(folder / "no-site"), "--json", str(out)])
    return code, json.loads(out.read_text()), printed.getvalue()


@pytest.mark.slow(reason="two tiny cases in fresh worker processes that import JAX and compile (80-90 s on 2 cores)")
def test_tiny_run_times_worldloom_and_reports_missing_official_sides(anchor_run):
    code, document, printed = anchor_run
    assert code == 0
    header = document["header"]
    assert header["platform"] == "cpu" and header["tiny"] and header["jax"]
    assert "not at" in header["official"]["dreamerv3"]["missing"]
    assert header["official"]["tdmpc2"]["commit"] == "0123456789abcdef"
    assert [row["case"] for row in document["cases"]] == RUN_CASES
    for row in document["cases"]:
        ours = row["sides"]["worldloom"]
        assert "error" not in ours, ours
        assert ours["params"] > 0 and ours["compile_s"] > 0
        assert ours["calls"] == header["rounds"] * header["repeats"]
        assert 0 < ours["min_ms"] <= ours["median_ms"]
        assert "speedup" not in row  # no official time, no ratio
        if row["case"].startswith("dreamer"):
            assert row["overrides"]["compute_dtype"] == "bfloat16"
            assert set(row["sides"]) == {"worldloom", "official"}
            assert "danijar/dreamerv3" in row["sides"]["official"]["missing"]
        else:
            assert set(row["sides"]) == {"worldloom", "official-eager", "official-compile"}
            for side in ("official-eager", "official-compile"):
                assert "no tensordict here" in row["sides"][side]["error"]
    rates = document["matmul_flops_per_s"]
    assert rates["f32"] > 0 and rates["bf16"] > 0
    update, plan = document["cases"]
    # XLA counts the update's FLOPs, set against the bf16 matmul (its compute dtype); a plan has no count
    assert update["flops"] > 0 and update["matmul_dtype"] == "bf16"
    assert update["fraction_of_matmul"] == pytest.approx(update["flops_per_s"] / rates["bf16"])
    assert plan["flops"] is None and "fraction_of_matmul" not in plan
    for case in RUN_CASES:
        assert f"| {case} | worldloom |" in printed
    assert "not at" in printed and "no tensordict here" in printed


def test_resume_skips_the_cases_the_results_file_holds(tmp_path, monkeypatch):
    """A rerun after a time limit goes on where the first run stopped: finished cases are not run again."""
    out = tmp_path / "anchor.json"
    done = {"case": TINY_CASES[0], "overrides": {}, "flops": None,
            "sides": {"worldloom": {"median_ms": 1.0, "min_ms": 1.0, "params": 1, "compile_s": 1.0,
                                    "peak_gib": None, "temp_gib": None}}}
    out.write_text(json.dumps({"header": {**gpu_anchor.device_info(), "tiny": True}, "cases": [done]}))
    ran = []
    monkeypatch.setattr(gpu_anchor, "run_case", lambda case, *args: ran.append(case) or dict(done, case=case))
    monkeypatch.setattr(gpu_anchor, "matmul_rates", lambda seconds: {"f32": 1e9, "bf16": 2e9})
    with pytest.raises(SystemExit):  # a full run never takes a tiny run's cases as its own
        gpu_anchor.main(["--json", str(out), "--resume", "--official", str(tmp_path)])
    assert ran == []
    gpu_anchor.main(["--tiny", "--json", str(out), "--resume", "--official", str(tmp_path)])
    assert ran == TINY_CASES[1:]
    assert [row["case"] for row in json.loads(out.read_text())["cases"]] == TINY_CASES
    assert not list(tmp_path.glob(".*.tmp"))  # written under a temporary name, then renamed


def test_speedups_and_table_from_official_times():
    """Speedup is official over worldloom (above 1: worldloom faster); the table shows each side's row and
    the compiled side's graph breaks."""
    side = lambda ms: {"median_ms": ms, "min_ms": ms, "params": 10, "compile_s": 2.0, "peak_gib": 0.5,  # noqa: E731
                       "temp_gib": None}
    row = {"case": "tdmpc2-update:5m", "overrides": {}, "flops": 4e9,
           "sides": {"worldloom": side(2.0), "official-eager": side(8.0),
                     "official-compile": dict(side(3.0), graph_breaks={"skipped builtin": 6})},
           "speedup": {"official-eager": 4.0, "official-compile": 1.5},
           "speedup_paired": {"official-eager": 4.1, "official-compile": 1.4}}
    document = {"cases": [row], "matmul_flops_per_s": {"f32": 4e12, "bf16": 8e12}}
    gpu_anchor.add_fractions(document["cases"], document["matmul_flops_per_s"])
    assert row["flops_per_s"] == pytest.approx(2e12) and row["fraction_of_matmul"] == pytest.approx(0.5)
    table = gpu_anchor.markdown(document)
    assert "| tdmpc2-update:5m | official-compile | 10 | 2.0 | 3.00 | 3.00 | 1.50x | 1.40x | 0.50 | - |" in table
    assert "| tdmpc2-update:5m | 2.000 | 4.000 (f32) | 50.0% |" in table
    assert "tdmpc2-update:5m, official-compile: 6 graph breaks (6 x skipped builtin)" in table


def test_cases_by_family_and_the_official_layout(tmp_path):
    assert gpu_anchor.select_cases(["tdmpc2"], tiny=False) == gpu_anchor.TDMPC2_CASES
    assert gpu_anchor.select_cases(None, tiny=True) == TINY_CASES
    with pytest.raises(ValueError, match="got 'dreamer-agent:size12m'"):
        gpu_anchor.select_cases(["dreamer-agent:size12m"], tiny=False)
    checkout = tmp_path / "dreamerv3" / "dreamerv3"
    checkout.mkdir(parents=True)
    (checkout / "agent.py").write_text("")
    (tmp_path / "dreamerv3" / "COMMIT").write_text("e3f0224\n")
    code = gpu_anchor.official_code(tmp_path)
    assert code["dreamerv3"] == {"repo": "danijar/dreamerv3", "path": str(tmp_path / "dreamerv3"), "commit": "e3f0224"}
    assert "missing" in code["tdmpc2"] and code["tdmpc2"]["commit"] is None


def test_report_puts_several_calls_in_one_table(tmp_path, capsys):
    """A GPU run split over calls: --report prints each file's device and commits, then all cases together."""
    ours = {"median_ms": 2.0, "min_ms": 2.0, "params": 10, "compile_s": 1.0, "peak_gib": None, "temp_gib": None}
    header = {"device": "GPU: NVIDIA H100 80GB HBM3", "jax": "0.11.2", "torch": "2.11.0",
              "official": {"tdmpc2": {"repo": "nicklashansen/tdmpc2", "commit": "e9f5932"}}}
    paths = []
    for index, case in enumerate(["dreamer-agent:size12m:vector", "tdmpc2-update:5m"]):
        paths.append(tmp_path / f"call{index}.json")
        paths[-1].write_text(json.dumps({"header": header, "cases": [{"case": case, "sides": {"worldloom": ours}}]}))
    assert gpu_anchor.main(["--report", *map(str, paths)]) == 0
    printed = capsys.readouterr().out
    assert "call0.json: GPU: NVIDIA H100 80GB HBM3; jax 0.11.2, torch 2.11.0; nicklashansen/tdmpc2 e9f5932" in printed
    assert "| dreamer-agent:size12m:vector | worldloom |" in printed and "| tdmpc2-update:5m | worldloom |" in printed
