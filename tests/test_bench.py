"""benchmarks/bench.py runs end to end with tiny budgets and writes its JSON (no SB3 needed).

No speed assertions: speed targets live in the benchmark output (docs/benchmarks.md), never here.
"""

import importlib.util
import json
from pathlib import Path

from conftest import ROOT, run_script


def test_quick_bench_without_sb3_writes_ppo_lab_rows_and_env_ceiling(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_script("benchmarks/bench.py", ["--quick", "--skip-sb3", "--json", str(out)],
                      cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    machine = report["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch"] and "cpu_capability" in machine
    if Path("/proc/cpuinfo").exists():  # Linux: the model name is recorded (machines of one kind differ)
        assert machine["cpu_model"]

    envs = ["CartPole-v1"] + (["HalfCheetah-v5"] if importlib.util.find_spec("mujoco") else [])
    for env_id in envs:
        res = report["results"][env_id]
        row = res["ppo_lab"]
        assert row["failed"] == 0
        assert row["steps"] > 0
        for key in ("process_sps", "loop_sps", "phases_sps", "process_wall_s", "peak_rss_kib"):
            assert row[key] > 0, (env_id, key, row)
        assert set(row["breakdown_s"]) >= {"env", "inference", "update", "log", "startup_and_exit"}
        assert "sb3" not in res and res["ratio_process_sps"] is None

    ceilings = [c for c in report["ceilings"] if c["env"] == "CartPole-v1"]
    assert ceilings and all(c["sps"] > 0 and c["steps"] > 0 for c in ceilings)
    assert "ppo_lab" in proc.stdout and "Env-only ceiling" in proc.stdout
    assert "Time to a target training return" in proc.stdout
    for env_id in envs:
        row = report["results"][env_id]["ppo_lab"]
        assert {"target_return", "target_reached", "time_to_target_s", "steps_to_target"} <= set(row)


def test_time_to_target_is_the_first_update_whose_last20_mean_reaches_it(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench
    finally:
        sys.path.pop(0)
    rows = [{"global_step": 512, "time/elapsed_s": 0.5},  # no episode finished yet
            {"global_step": 1024, "time/elapsed_s": 1.0, "charts/episodic_return_last20": 150.0},
            {"global_step": 1536, "time/elapsed_s": 1.6, "charts/episodic_return_last20": 195.0},
            {"global_step": 2048, "time/elapsed_s": 2.1, "charts/episodic_return_last20": 300.0}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench.time_to_target_ppo_lab(path, 195.0) == {
        "target_return": 195.0, "time_to_target_s": 1.6, "steps_to_target": 1536}
    assert bench.time_to_target_ppo_lab(path, 500.0)["time_to_target_s"] is None


def test_step_costs_script_prints_every_piece():
    proc = run_script("benchmarks/step_costs.py", ["--iters", "20"], cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "µs" not in line]
    names = {line.split(" | ")[0][2:] for line in rows}
    assert {"minibatch 128: forward", "minibatch 128: + clip and Adam (full step)",
            "rollout step: fused numpy snapshot .act (4 envs)", "op (128, 64): torch.tanh"} <= names
    assert all(float(line.rstrip(" |").split(" | ")[-1]) > 0 for line in rows)
