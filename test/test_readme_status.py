"""The README's Status table is what tools/experiments/readme_status.py makes of docs/results."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "experiments" / "readme_status.py"


def test_the_readme_status_table_is_current():
    out = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_a_stale_table_is_caught(tmp_path):
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text()
    stale = text.replace("<!-- status-table:end -->", "| a stray row | y | z |\n<!-- status-table:end -->")
    assert stale != text
    readme.write_text(stale)
    out = subprocess.run([sys.executable, str(SCRIPT), "--check", "--readme", str(readme)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "not current" in out.stderr
    assert subprocess.run([sys.executable, str(SCRIPT), "--readme", str(readme)]).returncode == 0
    assert readme.read_text() == text  # regenerated from the data, the stray row is gone


def test_the_table_is_made_from_the_result_files(tmp_path):
    """Fixed fixtures, not the latest lab numbers: each row follows its file and its target."""
    results = tmp_path / "docs" / "results"
    (results / "learning").mkdir(parents=True)
    (results / "graph").mkdir()
    (results / "learning" / "summary.json").write_text(json.dumps({
        "sft": {"heldout_success_greedy": 0.6, "heldout_episodes": 150, "ci95": [0.52, 0.68],
                "per_task": {"1": 0.5, "5": 0.3, "6": 1.0}, "source": "fixture.json",
                "repeat": {"heldout_success_greedy": 0.55, "difference_points": -5.0,
                           "difference_ci95": [-16.0, 6.0], "agrees": True, "source": "again.json"}},
        "rl": {"status": "run", "seeds": [0, 1, 2], "gain_points_mean": 16.0, "gain_ci95": [8.0, 24.0],
               "hours_per_seed_max": 2.0, "heldout_episodes_per_point": 150},
        "rl_by_budget": [{"seeds": [0, 1, 2], "gain_points_mean": 11.0, "gain_ci95": [2.0, 20.0],
                          "hours_per_seed_max": 0.27},
                         {"seeds": [0, 1, 2], "gain_points_mean": 16.0, "gain_ci95": [8.0, 24.0],
                          "hours_per_seed_max": 2.0}],
        "rl_critic": {"status": "run", "seeds": [0, 1, 2], "gain_points_mean": 15.5,
                      "gain_ci95": [-1.0, 30.0],
                      "hours_per_seed_max": 2.0, "heldout_episodes_per_point": 150},
        "ablations": {"no_prm": {
            "seeds": [0, 1, 2], "gain_points_mean": 4.0, "baseline": "rl",
            "end_minus_baseline_end": {"points_mean": -12.0, "ci95_pooled": [-20.0, -4.0],
                                       "fisher_p_pooled": 0.01}},
                      "more_data": {
            "seeds": [0, 1, 2], "gain_points_mean": 20.0, "baseline": "rl", "hours_per_seed_max": 1.2,
            "start_pooled": [252, 450], "end_pooled": [342, 450],
            "end_minus_baseline_end": {"points_mean": 4.0, "ci95_pooled": [-2.0, 10.0],
                                       "fisher_p_pooled": 0.2}}}}))
    (results / "graph" / "libero_bench.json").write_text(json.dumps({
        "ratio_graph_over_in_process": 0.85, "graph": {"env_steps_per_s": 34.0},
        "in_process": {"env_steps_per_s": 40.0}}))
    (results / "libero_env").mkdir()
    (results / "libero_env" / "frame_cost_decimated.json").write_text(json.dumps({
        "summary_by_faces": {"0": {"ms_per_frame": 100.0},
                             "2000": {"ms_per_frame": 20.0, "mean_abs_pixel_diff": 2.0}},
        "load_average_before": [1.0], "cpus": 2}))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "train_sim.yaml").write_text(
        "/**:\n  ros__parameters:\n    env:\n      visual_mesh_faces: 2000\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- status-table:begin -->\n<!-- status-table:end -->\nend\n")
    assert subprocess.run([sys.executable, str(SCRIPT), "--readme", str(readme), "--root", str(tmp_path)]
                          ).returncode == 0
    rows = {line.split(" | ")[0].lstrip("| "): line for line in readme.read_text().splitlines()
            if line.startswith("| ") and "---" not in line}
    sft = rows["chunked SFT start solves >= 50 % of held-out episodes, greedy"]
    assert "60.0 % of 150 [52.0 %, 68.0 %]" in sft and sft.endswith("| yes |")
    assert "a second run of the recipe 55.0 %, -5.0 points [-16.0, +6.0] (agrees); `again.json`" in sft
    rl = rows["`rl` >= +15 points held out over its start, 3 seeds, <= 2 h each"]
    assert "+16.0 points over 3 seed(s)" in rl and "<= 2 h a seed" in rl and rl.endswith("| yes |")
    assert ("by budget: <= 0.27 h +11.0 [+2.0, +20.0] (3 seed(s)), <= 2 h +16.0 [+8.0, +24.0] (3 seed(s))"
            in rl)
    # +15 on average is not enough: the target also wants the pooled interval above zero.
    assert rows["`rl_critic` >= +15 points held out over its start, 3 seeds, <= 2 h each"].endswith(
        "[-1.0, +30.0], 150 held-out episodes a point, <= 2 h a seed | **no** |")
    ablations = rows[
        "ablations of the best recipe (no PRM, no curriculum; `rl_critic` without warm-up), 3 seeds"]
    assert ("`no_prm`: +4.0 points over 3 seed(s); end minus `rl`'s end -12.0 [-20.0, -4.0], p = 0.01"
            in ablations)
    assert ablations.endswith("| **partly run** |")  # no_curriculum and no_warmup have not run
    assert "more_data" not in ablations  # context, not an ablation: its own row
    more_data = rows["`more_data` as context: `rl`'s env steps spent on expert demonstrations + SFT, 3 seeds"]
    assert ("252/450 -> 342/450; `more_data`: +20.0 points over 3 seed(s); end minus `rl`'s end "
            "+4.0 [-2.0, +10.0], p = 0.2; <= 1.2 h a seed" in more_data and more_data.endswith("| run |"))
    meshes = rows["decimated visual meshes (the next rollout lever)"]
    assert "100 ms -> 20 ms" in meshes and "used by config/train_sim.yaml (2,000 faces) | in use |" in meshes
    graph = rows["graph >= 90 % of the in-process env steps/s on the default LIBERO set"]
    assert "ratio 0.850" in graph and graph.endswith("| **no** |")
    assert readme.read_text().startswith("intro\n") and readme.read_text().endswith("end\n")
