"""The params file of the train_sim graph on the toy env with the tiny policy (graph tests)."""
from pathlib import Path

import yaml


def write_toy_graph_params(tmp_path: Path, episodes_per_iter: int = 2, action_timeout_s: float = 3.0,
                           lockstep: bool = False) -> Path:
    """2 toy envs, 4-step episodes, ``episodes_per_iter`` per bag; run and bags under ``tmp_path/run``."""
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "env": {"backend": "toy", "task_ids": [0, 1], "num_envs": 2, "image_size": 32,
                "max_episode_steps": 4},
        "policy": {"size": "tiny", "image_size": 32},
        # The critic estimator: these graph tests need every bag to make a policy version, and the
        # untrained tiny policy fails every toy episode, so group estimators would (rightly) find
        # only uniform groups and make no update.
        "ppo": {"advantage_estimator": "critic", "critic_warmup_iters": 1, "minibatch_size": 8},
        "train": {"episodes_per_iter": episodes_per_iter, "output_dir": str(tmp_path / "run"),
                  "torch_threads": 1},
        "graph": {"action_timeout_s": action_timeout_s, "bag_dir": str(tmp_path / "run" / "bags"),
                  "lockstep": lockstep}}}}))
    return config
