"""Test-time best-of-N in evaluation: candidate choice, ``vla-rl eval --best-of/--scaling``, PRM checks."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from file_modules import experiments_module
from vla_rl_ros.cli.main import main
from vla_rl_ros.core.envs.config import EnvConfig
from vla_rl_ros.core.envs.toy import ToyVectorEnv, toy_instruction, toy_task_count
from vla_rl_ros.core.evaluation import evaluate_policy, evaluate_scaling, evaluation_decoder
from vla_rl_ros.core.policy import PolicyConfig, VLAPolicy
from vla_rl_ros.core.rl.best_of_n import best_of_n_decode
from vla_rl_ros.core.rl.prm import ProcessRewardModel

pool_curves = experiments_module("analysis.scaling_pool").pool_curves

pytestmark = pytest.mark.usefixtures("one_torch_thread")
INSTRUCTIONS = [toy_instruction(i) for i in range(toy_task_count())]
# A toy evaluation of 2 held-out episodes x 3 steps: enough to exercise every path in seconds.
TOY = ["--set", "env.backend=toy", "--set", "env.task_ids=[0]", "--set", "env.num_envs=2",
       "--set", "env.image_size=32", "--set", "env.max_episode_steps=3", "--set", "policy.image_size=32",
       "--seeds", "0", "--episodes-per-task", "2", "--no-progress"]


def tiny(**norm) -> VLAPolicy:
    return VLAPolicy.create(PolicyConfig(size="tiny", image_size=32), instructions=INSTRUCTIONS, **norm)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny policy, a PRM that matches it and one trained for other action statistics."""
    root = tmp_path_factory.mktemp("best_of_n")
    policy = tiny()
    policy.save(str(root / "policy"))
    ProcessRewardModel(tiny()).save(root / "prm")
    other_stats = {"x": {"action": {"q01": [-2.0] * 7, "q99": [2.0] * 7, "mask": [True] * 7}}}
    ProcessRewardModel(tiny(norm_stats=other_stats)).save(root / "prm_mismatch")
    return policy, root


def toy_batch(batch: int = 2):
    observations = ToyVectorEnv(num_envs=batch).reset([(t, 40) for t in range(batch)])
    return observations, np.stack([o.image for o in observations]), [o.instruction for o in observations]


def proprio_of(observations):
    return np.stack([o.proprio for o in observations])


class RecordingScorer:
    """Scores each candidate chunk by its first action's first dimension and keeps what it was shown."""

    def __init__(self) -> None:
        self.candidates = None

    def __call__(self, images, instructions, out, proprio=None):
        self.candidates = np.asarray(out.actions)[:, 0]  # chunks of K = 1: [rows, 7]
        return self.candidates[:, 0].astype(np.float64)


def test_best_of_n_executes_the_candidate_the_scorer_ranks_highest(saved):
    policy, _ = saved
    observations, images, texts = toy_batch()
    scorer = RecordingScorer()
    best = best_of_n_decode(policy, images, texts, 8, scorer, torch.Generator().manual_seed(0),
                            proprio_of(observations))
    per_observation = scorer.candidates.reshape(8, 2, 7)  # candidate j of observation b is row j * B + b
    assert len(np.unique(per_observation[:, 0, 0])) > 1  # the candidates really differ
    assert np.array_equal(best.actions[:, 0, 0], per_observation[:, :, 0].max(0))
    # the evaluation actor executes exactly that choice for the same seed
    observations, _, _ = toy_batch()
    acted = evaluation_decoder(policy, 0, best_of=8, scorer=scorer)(observations).actions
    assert np.allclose(acted[:, 0, 0], scorer.candidates.reshape(8, 2, 7)[:, :, 0].max(0))


def test_best_of_n_never_picks_a_non_finite_score(saved):
    policy, _ = saved
    observations, images, texts = toy_batch(1)
    proprio = proprio_of(observations)

    def nan_but_last(images, instructions, out, proprio=None):
        scores = np.full(len(images), np.nan)
        scores[-1] = -1e9
        return scores
    generator = torch.Generator().manual_seed(1)
    reference = policy.decode(np.concatenate([images] * 4), texts * 4, generator=generator,
                              proprio=np.concatenate([proprio] * 4))
    best = best_of_n_decode(policy, images, texts, 4, nan_but_last, torch.Generator().manual_seed(1), proprio)
    assert torch.equal(best.tokens[0], reference.tokens[-1])


def test_best_of_one_keeps_greedy_decoding_and_n_below_one_is_rejected(saved):
    policy, _ = saved
    observations, images, texts = toy_batch()
    greedy = policy.decode(images, texts, greedy=True, proprio=proprio_of(observations)).actions
    assert np.allclose(evaluation_decoder(policy, 0)(observations).actions, greedy)
    assert np.allclose(evaluation_decoder(policy, 5, best_of=1)(observations).actions, greedy)
    with pytest.raises(ValueError, match="N >= 1"):
        evaluation_decoder(policy, 0, best_of=0)
    cfg = EnvConfig(backend="toy", task_ids=[0], num_envs=1, image_size=32, max_episode_steps=2)
    with pytest.raises(ValueError, match="N >= 1"):
        evaluate_policy(policy, cfg, best_of=0, progress=False)
    with pytest.raises(ValueError, match="N >= 1"):
        evaluate_scaling(policy, cfg, [1, 0], progress=False)


def test_scaling_runs_the_same_episodes_for_every_n(saved):
    policy, _ = saved
    cfg = EnvConfig(backend="toy", task_ids=[0, 1], num_envs=2, image_size=32, max_episode_steps=3)
    curve = evaluate_scaling(policy, cfg, [2, 1], seeds=[0, 1], episodes_per_task=1, progress=False)
    assert curve["best_of"] == [1, 2] and sorted(curve["per_n"]) == [1, 2]
    for point in curve["per_n"].values():
        assert point["episodes"] == 4 and 0.0 <= point["ci95"][0] <= point["success_rate"] <= point["ci95"][1]
        assert {task: v["episodes"] for task, v in point["per_task"].items()} == {"0": 2, "1": 2}
    assert not curve["uses_training_init_states"]


def test_scaling_reports_each_finished_point(saved):
    policy, _ = saved
    cfg = EnvConfig(backend="toy", task_ids=[0], num_envs=2, image_size=32, max_episode_steps=3)
    reported = []
    curve = evaluate_scaling(policy, cfg, [4, 1, 2], episodes_per_task=2, progress=False,
                             on_point=reported.append)
    assert [sorted(r["per_n"]) for r in reported] == [[1], [1, 2], [1, 2, 4]]
    assert [r["pending"] for r in reported] == [[2, 4], [4], []]
    assert curve["pending"] == [] and curve["per_n"] == reported[-1]["per_n"]
    assert reported[0]["per_n"][1] == curve["per_n"][1]  # a reported point is not changed later


def test_cli_best_of_records_n_scorer_and_prm(saved, tmp_path, capsys):
    _, root = saved
    out = tmp_path / "likelihood.json"
    assert main(["eval", "--policy", str(root / "policy"), "--best-of", "4", "--output", str(out), *TOY]) == 0
    result = json.loads(out.read_text())
    assert result["best_of"] == 4 and result["scorer"] == "likelihood" and result["prm"] is None
    assert result["greedy"] is False and result["overall"]["episodes"] == 2
    out = tmp_path / "prm.json"
    assert main(["eval", "--policy", str(root / "policy"), "--best-of", "2", "--prm", str(root / "prm"),
                 "--output", str(out), *TOY]) == 0
    result = json.loads(out.read_text())
    assert result["best_of"] == 2 and result["scorer"] == "prm" and result["prm"] == str(root / "prm")
    # without --best-of the evaluation stays greedy and needs no PRM
    assert main(["eval", "--policy", str(root / "policy"), "--output", str(out), *TOY]) == 0
    result = json.loads(out.read_text())
    assert result["best_of"] == 1 and result["greedy"] is True and result["scorer"] is None


def test_cli_scaling_writes_json_and_png(saved, tmp_path, capsys):
    _, root = saved
    code = main(["eval", "--policy", str(root / "policy"), "--scaling", "1,2,4", "--prm", str(root / "prm"),
                 "--output", str(tmp_path / "curve"), *TOY])
    assert code == 0
    result = json.loads((tmp_path / "curve" / "scaling.json").read_text())
    assert result["best_of"] == [1, 2, 4] and result["scorer"] == "prm" and result["prm"] == str(root / "prm")
    assert result["pending"] == []
    assert sorted(result["per_n"], key=int) == ["1", "2", "4"]
    for point in result["per_n"].values():
        assert point["episodes"] == 2 and len(point["ci95"]) == 2 and 0.0 <= point["success_rate"] <= 1.0
    plot = tmp_path / "curve" / "scaling.png"
    assert result["plot"] == str(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a .json output puts the plot beside it
    assert main(["eval", "--policy", str(root / "policy"), "--scaling", "1,2", "--output",
                 str(tmp_path / "s.json"), *TOY]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert json.loads((tmp_path / "s.json").read_text())["scorer"] == "likelihood"


def test_cli_scaling_crash_keeps_the_finished_points(saved, tmp_path, monkeypatch):
    """A crash while measuring N = 2 leaves N = 1 on disk (JSON and plot), marked as pending the rest."""
    import vla_rl_ros.core.evaluation as evaluation
    _, root = saved
    real_evaluate, calls = evaluation.evaluate_policy, []

    def dies_on_second_n(*args, **kwargs):
        calls.append(kwargs["best_of"])
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_policy", dies_on_second_n)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["eval", "--policy", str(root / "policy"), "--scaling", "1,2,4", "--output", str(tmp_path),
              *TOY])
    result = json.loads((tmp_path / "scaling.json").read_text())
    assert sorted(result["per_n"]) == ["1"] and result["pending"] == [2, 4]
    assert result["per_n"]["1"]["episodes"] == 2 and result["policy"] == str(root / "policy")
    assert (tmp_path / "scaling.png").stat().st_size > 0
    assert not list(tmp_path.glob("*.tmp"))


def test_cli_mismatched_prm_is_a_one_line_error(saved, capsys):
    _, root = saved
    code = main(["eval", "--policy", str(root / "policy"), "--best-of", "2",
                 "--prm", str(root / "prm_mismatch"), *TOY])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "does not match the policy" in err and "Traceback" not in err and len(err.splitlines()) == 1
    code = main(["eval", "--policy", str(root / "policy"), "--best-of", "2", "--scorer", "prm", *TOY])
    assert code == 2 and "needs a PRM" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--best-of", "0"], ["--scaling", "1,0,4"], ["--scaling", "two"]])
def test_cli_rejects_n_below_one(saved, capsys, option):
    _, root = saved
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--policy", str(root / "policy"), *option, *TOY])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "N must be >= 1" in err or "not an integer" in err


def test_pooled_curve_counts_every_seeds_episodes(saved, tmp_path):
    policy, _ = saved
    cfg = EnvConfig(backend="toy", task_ids=[0, 1], num_envs=2, image_size=32, max_episode_steps=3)
    provenance = dict(policy="p", adapters=None, scorer="likelihood", prm=None, temperature=1.0)
    curves = [dict(evaluate_scaling(policy, cfg, [1, 2], seeds=[seed], episodes_per_task=2, progress=False),
                   **provenance) for seed in (0, 1)]
    pooled = pool_curves(curves)
    assert pooled["seeds"] == [0, 1] and pooled["per_n"].keys() == {"1", "2"}
    for n in (1, 2):
        point, parts = pooled["per_n"][str(n)], [curve["per_n"][n] for curve in curves]
        assert point["episodes"] == 8 and point["successes"] == sum(p["successes"] for p in parts)
        assert point["ci95"][0] <= point["success_rate"] <= point["ci95"][1]
        assert sum(task["episodes"] for task in point["per_task"].values()) == 8
        assert point["wall_s"] == pytest.approx(sum(p["wall_s"] for p in parts), abs=0.1)
    with pytest.raises(ValueError, match="seeds overlap"):
        pool_curves([curves[0], curves[0]])
    with pytest.raises(ValueError, match="differs in temperature"):
        pool_curves([curves[0], dict(curves[1], temperature=0.5)])
    with pytest.raises(ValueError, match="unfinished"):
        pool_curves([curves[0], dict(curves[1], pending=[2])])
    # the tool: pooled JSON and plot from files; a corrupt input is a one-line error, exit 2
    tool = Path(__file__).resolve().parents[1] / "tools" / "experiments" / "pool_scaling.py"
    files = []
    for index, curve in enumerate(curves):
        files.append(tmp_path / f"c{index}.json")
        files[-1].write_text(json.dumps(curve))
    done = subprocess.run([sys.executable, str(tool), "--out", str(tmp_path / "pooled"), *map(str, files)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "pooled" / "scaling.json").read_text())["per_n"] == pooled["per_n"]
    assert (tmp_path / "pooled" / "scaling.png").stat().st_size > 0
    files[1].write_text("{not json")
    done = subprocess.run([sys.executable, str(tool), "--out", str(tmp_path / "bad"), *map(str, files)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "pool_scaling:" in done.stderr and "Traceback" not in done.stderr
