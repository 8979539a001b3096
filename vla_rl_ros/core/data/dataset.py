"""Frames of recorded demonstrations as a torch Dataset for imitation (SFT)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vla_rl_ros.core.data.episode_bag import BagError, read_episode_bag
from vla_rl_ros.core.data.recording import load_index
from vla_rl_ros.core.envs.splits import is_held_out


class DemoDataset(Dataset):
    """Every (image, instruction, action) step of the successful episodes in a demo directory.

    All demonstration passes of an init state are read (``demos.passes``); ``init_state_ids``
    filters init states, not passes. ``num_train_init_states`` drops every held-out context
    (held-out init states and held-out layouts) and keeps training init states and fresh training
    layouts (``demos.fresh_layouts_per_task``).

    The episodes are decoded once into memory (uint8 frames: about 50 kB per 128x128 step).
    A damaged bag raises :class:`BagError` naming the file; nothing is skipped silently.
    """

    def __init__(self, directory: str | Path, task_ids: list[int] | None = None,
                 init_state_ids: list[int] | None = None, num_train_init_states: int | None = None) -> None:
        """Load the episodes of ``task_ids`` (default all) and ``init_state_ids`` (default all)."""
        self.directory = Path(directory)
        index = load_index(self.directory)
        entries = [e for e in index.get("episodes", []) if e.get("success") and e.get("bag")
                   and (task_ids is None or e["task_id"] in task_ids)
                   and (init_state_ids is None or e["init_state_id"] in init_state_ids)
                   and (num_train_init_states is None
                        or not is_held_out(e["init_state_id"], num_train_init_states))]
        if not entries:
            raise BagError(f"no successful demonstrations in {self.directory} "
                           f"(index {self.directory / 'index.json'}; tasks {task_ids})")
        self.suite = index.get("suite", "")
        images, actions, proprio, instructions, task_of_step, episode_of_step = [], [], [], [], [], []
        self.episodes = []
        # Every pass of an init state is its own episode (old indexes have no pass: pass 0).
        order = sorted(entries, key=lambda e: (e["task_id"], e["init_state_id"], e.get("pass", 0)))
        for number, entry in enumerate(order):
            episode = read_episode_bag(self.directory / entry["bag"])
            self.episodes.append(dict(task_id=episode.task_id, init_state_id=episode.init_state_id,
                                      demo_pass=entry.get("pass", 0), instruction=episode.instruction,
                                      num_steps=episode.num_steps))
            images.append(episode.images)
            actions.append(episode.actions)
            proprio.append(episode.proprio)
            instructions.append(episode.instruction)
            task_of_step.append(np.full(episode.num_steps, episode.task_id))
            episode_of_step.append(np.full(episode.num_steps, number))
        self.images = np.concatenate(images)
        self.actions = np.concatenate(actions).astype(np.float32)
        self.proprio = np.concatenate(proprio).astype(np.float32)
        self.task_ids = np.concatenate(task_of_step)
        self.episode_ids = np.concatenate(episode_of_step)
        self.instruction_of_episode = instructions

    def __len__(self) -> int:
        return len(self.actions)

    def __getitem__(self, index: int) -> dict:
        return {"image": torch.from_numpy(self.images[index]),
                "action": torch.from_numpy(self.actions[index]),
                "proprio": torch.from_numpy(self.proprio[index]),
                "instruction": self.instruction_of_episode[self.episode_ids[index]],
                "task_id": int(self.task_ids[index])}

    def action_chunks(self, size: int) -> np.ndarray:
        """Imitation labels of a policy that emits ``size`` actions per call: float32 [N, size, 7].

        Row t holds frame t's action and the next ``size - 1`` of the same episode; past the end
        of the episode the last action repeats (the expert holds still once the task is done), so
        a chunk never mixes two episodes.
        """
        if size < 1:
            raise ValueError(f"chunk size must be >= 1, got {size}")
        last_of_episode = np.zeros(len(self), dtype=np.int64)
        ends = np.flatnonzero(np.diff(self.episode_ids, append=-1) != 0)  # last frame of each episode
        starts = np.concatenate([[0], ends[:-1] + 1])
        for start, end in zip(starts, ends):
            last_of_episode[start:end + 1] = end
        index = np.minimum(np.arange(len(self))[:, None] + np.arange(size)[None, :], last_of_episode[:, None])
        return self.actions[index]

    @property
    def instructions(self) -> list[str]:
        """Distinct instructions, in task order."""
        return list(dict.fromkeys(self.instruction_of_episode))

    def norm_stats(self, key: str | None = None) -> dict:
        """OpenVLA-style action statistics ``{key: {"action": {q01, q99, mask, mean, std, min, max}}}``.

        The gripper dimension is masked (binary -1/+1, passes through un-normalised).
        """
        actions = self.actions.astype(np.float64)
        stats = {"q01": np.quantile(actions, 0.01, axis=0), "q99": np.quantile(actions, 0.99, axis=0),
                 "mean": actions.mean(0), "std": actions.std(0), "min": actions.min(0), "max": actions.max(0)}
        action = {name: values.tolist() for name, values in stats.items()}
        action["mask"] = [True] * (actions.shape[1] - 1) + [False]
        return {key or self.suite or "demos": {"action": action}}


def collate_demos(batch: list[dict]) -> dict:
    """Stack a list of :class:`DemoDataset` items (instructions stay a list of strings)."""
    return {"image": torch.stack([b["image"] for b in batch]),
            "action": torch.stack([b["action"] for b in batch]),
            "proprio": torch.stack([b["proprio"] for b in batch]),
            "instruction": [b["instruction"] for b in batch],
            "task_id": torch.tensor([b["task_id"] for b in batch])}
