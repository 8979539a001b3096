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


FIRST_MODULES = ("test_ros2_launch_real",)
"""Run before everything else. Started after the in-process ROS tests, the real ``ros2 launch``
never acted on the test's Ctrl-C (all three timed out in two full runs, while they pass alone
and after any single other test file tried); whatever process state those tests leave behind
was not found, so these run while the process is fresh."""


def pytest_collection_modifyitems(session, config, items):
    """Move the FIRST_MODULES' tests to the front, keeping every other test's order."""
    first = [item for item in items if item.module.__name__ in FIRST_MODULES]
    if first:
        items[:] = first + [item for item in items if item.module.__name__ not in FIRST_MODULES]
