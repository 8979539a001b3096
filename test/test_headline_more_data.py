"""The headline's ``more_data`` arm on a real LIBERO scene, with a tiny policy and a tiny budget.

Records one scripted-expert demonstration as the "original" demos, then asks the arm to spend an
``rl`` arm's env steps on more expert passes and SFT: the copy grows by whole episodes of a new
noise stream, the original stays as it was, the SFT policy is evaluated with the RL arms' held-out
protocol, and a rerun reads the result back without recording or training again.
"""
import argparse
import json

import pytest

from file_modules import experiments_module
from vla_rl_ros.cli.main import main as vla_rl

more_data = experiments_module("headline_more_data")
arms = experiments_module("headline_arms")

TINY = ["env.task_ids=[0]", "env.num_envs=1", "env.image_size=32", "policy.size=tiny", "policy.image_size=32",
        "sft.steps=2", "sft.batch_size=4", "sft.checkpoint_every=2", "sft.warmup_steps=1", "sft.log_every=1",
        "train.eval_episodes=1", "train.torch_threads=1"]
RL_ENV_STEPS = 50  # less than one expert episode: one extra pass of one episode covers it


@pytest.fixture(scope="module")
def original_demos(tmp_path_factory):
    demos = tmp_path_factory.mktemp("demos")
    assert vla_rl(["demos", "--no-progress", "--init-states", "2", "--set", f"demos.output_dir={demos}",
                   "--set", "env.task_ids=[0]", "--set", "env.num_envs=1", "--set", "env.image_size=32",
                   "--set", "demos.action_noise=0.1", "--set", "demos.fresh_layouts_per_task=0"]) == 0
    return demos


def headline_args(out, demos) -> argparse.Namespace:
    return argparse.Namespace(config=None, overrides=TINY, sft_policy=None, prm=None,
                              demos=None if demos is None else str(demos), seed_list=[0], out=str(out),
                              judge="greedy", no_progress=True, no_tensorboard=True)


def rl_result(start_wins=0) -> dict:
    start = {"rate": start_wins / 1.0, "wins": start_wins, "episodes": 1, "ci95": [0.0, 1.0]}
    return {"arm": "rl", "seed": 0, "env_steps": RL_ENV_STEPS, "start": start}


def test_more_data_records_the_rl_budget_as_demos_trains_and_reads_back(tmp_path, original_demos,
                                                                        one_torch_thread):
    original_index = (original_demos / "index.json").read_bytes()
    (result,) = more_data.run_more_data(headline_args(tmp_path, original_demos), [rl_result()])

    copy = tmp_path / "more_data" / "demos"
    index = json.loads((copy / "index.json").read_text())
    base = json.loads(original_index)["episodes"]
    extra = [e for e in index["episodes"] if e.get("pass", 0) == 1]
    assert len(index["episodes"]) == len(base) + 1 and len(extra) == 1  # one chunk of one worker
    assert extra[0]["bag"].endswith("_pass1") and (copy / extra[0]["bag"]).is_dir()
    assert result["env_steps"] == extra[0]["num_steps"] >= RL_ENV_STEPS
    assert result["target_env_steps"] == RL_ENV_STEPS and result["passes"] == 2
    assert (original_demos / "index.json").read_bytes() == original_index  # the original is untouched

    sft = json.loads((tmp_path / "more_data" / "seed0" / "sft" / "sft_result.json").read_text())
    assert sft["steps_done"] == 2
    assert result["arm"] == "more_data" and result["protocol"] == "greedy"
    assert result["start"] == rl_result()["start"]  # the rl arm's start: the race starts from one place
    assert result["end"]["episodes"] == 1 and result["wall_s"] > 0
    written = json.loads((tmp_path / "more_data" / "seed0" / arms.RESULT_FILE).read_text())
    assert written == json.loads(json.dumps(result))

    # A rerun records nothing, trains nothing and evaluates nothing: it reads the seed back.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "more_data").rglob("*") if p.is_file()}
    (again,) = more_data.run_more_data(headline_args(tmp_path, original_demos), [rl_result()])
    assert again == written
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "more_data").rglob("*") if p.is_file()} == stamps


def test_more_data_refuses_without_demos_or_rl_results(tmp_path, original_demos):
    with pytest.raises(SystemExit, match="needs --demos"):
        more_data.run_more_data(headline_args(tmp_path, None), [rl_result()])
    with pytest.raises(SystemExit, match=r"missing seeds \[0\]"):
        more_data.run_more_data(headline_args(tmp_path, original_demos), [])
    assert not (tmp_path / "more_data").exists()


def test_extra_passes_replay_the_demos_training_mix_and_never_held_out_contexts():
    # 2 training init states, 3 training layouts, and held-out ids that demos must never hold
    # (a held-out init state, a held-out layout): replayed alternating, held-out ones dropped.
    ids = [0, 1, 1_000, 1_001, 1_002, 45, 1_000_000]
    index = {"episodes": [{"init_state_id": i, "task_id": t} for i in ids for t in (0, 1)]}
    assert more_data.replayed_contexts(index, num_train_init_states=40) == [0, 1_000, 1, 1_001, 1_002]
    only_states = {"episodes": [{"init_state_id": i} for i in (3, 2)]}
    assert more_data.replayed_contexts(only_states, num_train_init_states=40) == [2, 3]


def test_more_data_refuses_a_copy_recorded_on_other_contexts(tmp_path, original_demos):
    # An older rule replayed other contexts: a rerun must not count those passes as this arm's.
    folder = tmp_path / "more_data"
    folder.mkdir()
    (folder / "extra.json").write_text(json.dumps({"record_wall_s": 5.0}))
    with pytest.raises(SystemExit, match="other contexts"):
        more_data.run_more_data(headline_args(tmp_path, original_demos), [rl_result()])
    assert json.loads((folder / "extra.json").read_text()) == {"record_wall_s": 5.0}
