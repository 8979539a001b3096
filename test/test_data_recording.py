"""``vla-rl demos`` end to end on a real LIBERO scene: record, resume (skip), read back, bad input."""
import json

import numpy as np

from vla_rl_ros.cli.main import main
from vla_rl_ros.core.data import DemoDataset, read_episode_bag


def test_demos_command_records_resumes_and_reads_back(tmp_path, capsys):
    args = ["demos", "--no-progress", "--init-states", "2", "--set", f"demos.output_dir={tmp_path}",
            "--set", "env.task_ids=[0]", "--set", "env.num_envs=1", "--set", "env.image_size=32"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["attempted"] == 1 and report["succeeded"] == 1
    assert report["per_task"]["0"]["success_rate"] == 1.0
    index = json.loads((tmp_path / "index.json").read_text())
    (entry,) = index["episodes"]
    episode = read_episode_bag(tmp_path / entry["bag"])
    assert episode.images.shape[1:] == (32, 32, 3) and episode.num_steps == entry["num_steps"] > 50
    assert episode.actions[:, -1].max() == 1.0  # the gripper closed at some point
    assert len(DemoDataset(tmp_path)) == episode.num_steps
    assert main(args) == 0  # rerun: nothing left to do
    again = json.loads(capsys.readouterr().out)
    assert again["skipped"] == 1 and again["attempted"] == 0


def test_demos_refuses_held_out_init_states(tmp_path, capsys):
    code = main(["demos", "--init-states", "0,45", "--set", f"demos.output_dir={tmp_path}"])
    assert code == 2 and "held out for evaluation" in capsys.readouterr().err
    assert not (tmp_path / "index.json").exists()


def test_demos_with_noise_record_the_setting_and_refuse_mixing(tmp_path, capsys):
    args = ["demos", "--no-progress", "--init-states", "3", "--set", f"demos.output_dir={tmp_path}",
            "--set", "env.task_ids=[0]", "--set", "env.num_envs=1", "--set", "env.image_size=32",
            "--set", "demos.action_noise=0.1"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["succeeded"] == 1
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["action_noise"] == 0.1
    episode = read_episode_bag(tmp_path / index["episodes"][0]["bag"])
    assert np.all(np.abs(episode.actions) <= 1.0)
    code = main(args[:-2] + ["--set", "demos.action_noise=0.0"])
    assert code == 2 and "action_noise=0.1" in capsys.readouterr().err
