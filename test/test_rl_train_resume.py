"""`vla-rl train` on the toy env: checkpoints, exact resume, refused mismatched resume, results."""
import json

import pytest
import torch

from vla_rl_ros.cli.main import main
from vla_rl_ros.core.config import load_config
from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.core.rl.checkpoint import checkpoint_dir, load_checkpoint
from vla_rl_ros.core.envs.toy import ToyProgressOracle, ToyVectorEnv
from vla_rl_ros.core.rl.train_loop import TrainingRun

torch.set_num_threads(1)

BASE = ["env.backend=toy", "env.task_ids=[0,1]", "env.num_envs=2", "env.image_size=32",
        "env.max_episode_steps=4",
        "policy.size=tiny", "policy.image_size=32", "train.episodes_per_iter=2", "train.eval_every=2",
        "train.eval_episodes=2", "train.torch_threads=1", "ppo.minibatch_size=4", "ppo.critic_warmup_iters=1",
        "ppo.policy_lr=1e-2", "ppo.epochs=2", "ppo.advantage_estimator=critic"]
"""The critic estimator: its value head, warm-up and bootstrap state are the most there is to resume."""


def config(tmp_path, name, *extra):
    return load_config(None, BASE + [f"train.output_dir={tmp_path / name}", *extra])


def train(cfg):
    run = TrainingRun(cfg, progress_bar=False, tensorboard=False)
    run.run()
    return run


def weights(run):
    return [p.detach().clone() for p in run.policy.policy_parameters() + run.policy.value_parameters()]


STABLE_KEYS = ("rollout/success_rate", "rollout/return", "ppo/approx_kl", "ppo/value_loss", "ppo/policy_loss",
               "rollout/env_steps")


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    straight = train(config(tmp_path, "a", "train.iterations=3"))
    train(config(tmp_path, "b", "train.iterations=2"))
    assert load_checkpoint(tmp_path / "b")["iteration"] == 2
    resumed = train(config(tmp_path, "b", "train.iterations=3"))
    assert all(torch.equal(x, y) for x, y in zip(weights(straight), weights(resumed)))
    assert [{k: h.get(k) for k in STABLE_KEYS} for h in straight.history] == \
        [{k: h.get(k) for k in STABLE_KEYS} for h in resumed.history]
    assert straight.curriculum.state_dict()["success"] == resumed.curriculum.state_dict()["success"]
    out = tmp_path / "b"
    assert (checkpoint_dir(out) / "adapters").is_dir()
    assert not list(checkpoint_dir(out).parent.glob(".latest.tmp-*"))  # no leftovers of atomic writes
    summary = json.loads((out / "results" / "summary.json").read_text())
    assert summary["iterations"] == 3 and summary["resumed"] is True
    for plot in ("success_vs_iteration.png", "success_vs_env_steps.png", "per_task_success.png"):
        assert (out / "results" / plot).stat().st_size > 1000
    assert summary["eval_last"]["eval/episodes"] == 2


def test_resume_with_a_different_config_is_refused(tmp_path):
    train(config(tmp_path, "c", "train.iterations=1", "train.eval_every=0"))
    with pytest.raises(ConfigError, match="ppo.clip_range"):
        TrainingRun(config(tmp_path, "c", "train.iterations=2", "train.eval_every=0", "ppo.clip_range=0.1"),
                    progress_bar=False, tensorboard=False).run()
    assert load_checkpoint(tmp_path / "c")["iteration"] == 1  # the checkpoint is untouched


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    cfg = config(tmp_path, "d", "train.iterations=1", "train.eval_every=0")
    path = checkpoint_dir(cfg.train.output_dir)
    path.mkdir(parents=True)
    (path / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read"):
        TrainingRun(cfg, progress_bar=False, tensorboard=False).run()


def test_cli_train_with_ablation_switches(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["train", "--no-progress", *sum([["--set", s] for s in BASE], []),
                 "--set", f"train.output_dir={out}", "--set", "train.iterations=1",
                 "--set", "train.eval_every=0",
                 "--set", "curriculum.enabled=false", "--set", "reward.prm_weight=0",
                 "--set", "ppo.critic_warmup_iters=0"])
    assert code == 0
    headline = json.loads(capsys.readouterr().out)
    assert headline["iterations"] == 1
    summary = json.loads((out / "results" / "summary.json").read_text())
    assert summary["ablations"] == {"prm": False, "curriculum": False, "critic_warmup_iters": 0}
    assert list((out / "tensorboard").iterdir())


class AbortingToyEnv(ToyVectorEnv):
    """The toy env whose every episode ends as a worker fault would (aborted)."""

    def step(self, actions):
        results = super().step(actions)
        for r in results:
            if not r.info.get("inactive"):
                r.done, r.aborted, r.success = True, True, False
                self.done[:] = True
        return results


def test_prm_rewards_flow_and_all_aborted_rollouts_skip_the_update(tmp_path):
    cfg = config(tmp_path, "e", "train.iterations=1", "train.eval_every=0", "reward.prm_weight=1.0")
    run = TrainingRun(cfg, env=ToyVectorEnv(2, 32, 4), prm=ToyProgressOracle(), progress_bar=False,
                      tensorboard=False)
    run.run()
    assert "rollout/prm_final_progress" in run.history[-1]
    cfg = config(tmp_path, "f", "train.iterations=1", "train.eval_every=0")
    run = TrainingRun(cfg, env=AbortingToyEnv(2, 32, 4), progress_bar=False, tensorboard=False)
    before = weights(run)
    run.run()
    assert run.history[-1]["rollout/empty"] == 1.0 and run.history[-1]["rollout/aborted"] == 2
    assert all(torch.equal(x, y) for x, y in zip(before, weights(run)))


def test_time_budget_stops_iterations_and_carries_over_a_resume(tmp_path):
    run = train(config(tmp_path, "budget", "train.iterations=2"))
    assert run.iteration == 2 and run.wall_s > 0
    spent = run.wall_s
    # The budget is already spent by the first invocation: a resume for more starts no iteration,
    # keeps the weights and says why it stopped.
    before = weights(run)
    again = train(config(tmp_path, "budget", "train.iterations=5", f"train.time_budget_s={spent / 2}"))
    summary = again.summary(resumed=True)
    assert again.iteration == 2 and summary["stopped_by_time_budget"] is True
    assert summary["wall_s"] >= round(spent, 1)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(again)))
    unlimited = train(config(tmp_path, "budget", "train.iterations=3"))
    assert unlimited.iteration == 3 and unlimited.summary(resumed=True)["stopped_by_time_budget"] is False


def test_sampled_evaluation_is_seeded_labelled_and_leaves_the_rollout_stream_alone(tmp_path):
    cfg = config(tmp_path, "sampled", "train.iterations=0", "train.eval_sample=true", "train.eval_episodes=4",
                 "policy.temperature=2.0")
    run = TrainingRun(cfg, env=ToyVectorEnv(2, 32, 4), progress_bar=False, tensorboard=False)
    asked = []
    decode = run.policy.decode

    def spying_decode(*args, **kwargs):
        asked.append(kwargs.get("greedy"))
        return decode(*args, **kwargs)
    run.policy.decode = spying_decode
    rollout_stream = run.generators["decode"].get_state()
    first, second = run.evaluate(), run.evaluate()
    assert asked and not any(asked)  # every held-out step was sampled
    assert first == second  # the same seeded stream at every evaluation
    assert first["eval/protocol"] == "sampled T=2" and first["eval/episodes"] == 4
    assert torch.equal(run.generators["decode"].get_state(), rollout_stream)
    asked.clear()
    run.cfg.train.eval_sample = False
    assert run.evaluate()["eval/protocol"] == "greedy" and asked and all(asked)


def test_eval_command_loads_a_runs_adapters_and_refuses_bad_ones(tmp_path, capsys):
    run = TrainingRun(config(tmp_path, "adapted", "train.iterations=2", "train.eval_every=0"),
                      progress_bar=False, tensorboard=False)
    policy_dir = tmp_path / "base_policy"
    run.policy.save(str(policy_dir))  # the weights the adapters will sit on, before any update
    run.run()
    adapters = checkpoint_dir(tmp_path / "adapted") / "adapters"
    toy = [*sum([["--set", s] for s in BASE], []), "--seeds", "0", "--episodes-per-task", "1",
           "--no-progress"]
    capsys.readouterr()
    assert main(["eval", "--policy", str(policy_dir), "--adapters", str(adapters), *toy]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["adapters"] == str(adapters) and result["adapter_version"] == 2
    assert main(["eval", "--policy", str(policy_dir), "--adapters", str(tmp_path / "missing"), *toy]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "Traceback" not in err
    wrong_rank = [*toy, "--set", "policy.lora_rank=2"]
    assert main(["eval", "--policy", str(policy_dir), "--adapters", str(adapters), *wrong_rank]) == 2
    assert "LoRA" in capsys.readouterr().err
