"""``vla-rl demos`` end to end on a real LIBERO scene: record, resume (skip), read back, bad input."""
import json

import numpy as np

from vla_rl_ros.cli.main import main
from vla_rl_ros.core.data import DemoDataset, read_episode_bag
from vla_rl_ros.core.data.recording import load_index, record_demonstrations
from vla_rl_ros.core.envs.base import Observation, StepResult
from vla_rl_ros.core.envs.config import EnvConfig


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
    code = main(["demos", "--init-states", "1000000", "--set", f"demos.output_dir={tmp_path}"])
    assert code == 2 and "[1000000] are held out" in capsys.readouterr().err
    code = main(["demos", "--init-states", "60", "--set", f"demos.output_dir={tmp_path}"])
    assert code == 2 and "init state 60 does not exist" in capsys.readouterr().err
    assert not (tmp_path / "index.json").exists()


def test_demos_default_plan_adds_fresh_training_layouts(tmp_path, capsys):
    args = ["demos", "--no-progress", "--set", f"demos.output_dir={tmp_path}", "--set", "env.task_ids=[0]",
            "--set", "env.num_envs=1", "--set", "env.image_size=32", "--set", "demos.episodes_per_task=1",
            "--set", "demos.fresh_layouts_per_task=1", "--dry-run"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["init_state_ids"] == [0, 1000] and report["attempted"] == 2 and report["succeeded"] == 2


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


def test_demo_passes_record_new_noise_streams_resume_by_pass_and_read_back(tmp_path, capsys):
    args = ["demos", "--no-progress", "--init-states", "4", "--set", f"demos.output_dir={tmp_path}",
            "--set", "env.task_ids=[0]", "--set", "env.num_envs=1", "--set", "env.image_size=32",
            "--set", "demos.action_noise=0.1"]
    assert main(args) == 0  # pass 0 only, as before passes existed
    assert json.loads(capsys.readouterr().out)["succeeded"] == 1
    assert main(args + ["--set", "demos.passes=2"]) == 0  # resumes: only pass 1 is new
    report = json.loads(capsys.readouterr().out)
    assert report["skipped"] == 1 and report["attempted"] == 1 and report["succeeded"] == 1
    entries = sorted(json.loads((tmp_path / "index.json").read_text())["episodes"], key=lambda e: e["pass"])
    assert [e["pass"] for e in entries] == [0, 1]
    assert entries[0]["bag"] == "libero_object_task00_init04"
    assert entries[1]["bag"] == "libero_object_task00_init04_pass1"
    first, second = (read_episode_bag(tmp_path / e["bag"]) for e in entries)
    # Same scene, other executed noise: the trajectories differ.
    assert first.num_steps != second.num_steps or not np.array_equal(first.proprio, second.proprio)
    dataset = DemoDataset(tmp_path)
    assert len(dataset) == first.num_steps + second.num_steps
    assert [e["demo_pass"] for e in dataset.episodes] == [0, 1]


class _TwoStepExpertEnv:
    """A stand-in for VectorEnv: records reset assignments; every episode succeeds in 2 steps."""

    num_envs = 1

    def __init__(self):
        self.assignments, self.steps = [], 0

    def reset(self, assignments, env_ids=None):
        self.assignments.extend(assignments)
        self.steps = 0
        return [self._observation()]

    def _observation(self):
        task, init = self.assignments[-1][:2]
        return Observation(image=np.zeros((8, 8, 3), np.uint8), instruction="pick",
                           proprio=np.zeros(9, np.float32), task_id=task, init_state_id=init)

    def step_expert(self, noise_std=0.0):
        self.steps += 1
        done = self.steps == 2
        return [StepResult(observation=self._observation(), reward=float(done), done=done, success=done,
                           info={"action": np.zeros(7, np.float32)})]


def test_pass_zero_resets_as_before_and_old_indexes_count_as_pass_zero(tmp_path):
    # An index written before passes existed: its entry has no "pass" and is pass 0.
    old_entry = dict(task_id=0, init_state_id=1, success=True, num_steps=2, instruction="pick",
                     bag="libero_object_task00_init01")
    (tmp_path / "index.json").write_text(json.dumps({"suite": "libero_object", "action_noise": 0.1,
                                                     "episodes": [old_entry]}))
    env = _TwoStepExpertEnv()
    report = record_demonstrations(EnvConfig(task_ids=[0], num_envs=1), tmp_path, [1, 2], progress=False,
                                   vector_env=env, action_noise=0.1, passes=2)
    # Pass 0 resets with the pair (the worker then seeds its noise as it always did); pass p > 0
    # adds p, which gives the worker another noise stream.
    assert env.assignments == [(0, 2), (0, 1, 1), (0, 2, 1)]
    assert report.skipped == 1 and report.succeeded == 3
    keys = sorted((e["init_state_id"], e.get("pass", 0), e["bag"]) for e in load_index(tmp_path)["episodes"])
    assert keys == [(1, 0, "libero_object_task00_init01"), (1, 1, "libero_object_task00_init01_pass1"),
                    (2, 0, "libero_object_task00_init02"), (2, 1, "libero_object_task00_init02_pass1")]
