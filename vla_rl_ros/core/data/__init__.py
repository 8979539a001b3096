"""Demonstration data: episode bags (rosbag2 MCAP), recording, and the training dataset.

``DemoDataset`` (which needs torch) is imported lazily so that configuration loading stays light.
"""
from vla_rl_ros.core.data.episode_bag import BagError, EpisodeRecord, read_episode_bag, write_episode_bag

__all__ = ["BagError", "DemoDataset", "EpisodeRecord", "read_episode_bag", "write_episode_bag"]


def __getattr__(name: str):
    if name == "DemoDataset":
        from vla_rl_ros.core.data.dataset import DemoDataset
        return DemoDataset
    raise AttributeError(name)
