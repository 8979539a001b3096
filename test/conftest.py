"""Shared test set-up: loopback-only DDS, quiet ROS logs, no stray CUDA or hub access."""
import os

import pytest
import torch

# DDS traffic must never leave loopback on developer machines and CI.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_LOG_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "vla_rl_ros_test_logs"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def one_torch_thread():
    """The CPU is shared: one intra-op thread keeps tiny-model tests fast and deterministic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
