"""The learner's ledger of bags and episodes: what it trains on, in what order, exactly once.

ROS-free helpers of ``learner_node``:

- The bags to train on are the complete ones (``metadata.yaml`` written) of ``graph.bag_dir``, in
  iteration order, that the learner has neither trained on nor refused; a ``TrajectoryBagInfo``
  only says when to look. So a learner that was down, or joined late, or missed notices (the
  topic keeps the last ten), still takes every bag, and a re-delivered notice changes nothing.
- The staleness rule (:meth:`EpisodeLedger.select`): an episode is trained on when the oldest
  policy version among its turns is at most ``max_policy_lag`` versions behind the learner's
  version at the update; PPO's clipped ratio against the recorded log-probs corrects that much
  lag. Older ones are counted as ``stale`` and never trained on; an episode of a version newer than
  the learner's comes from another run (``foreign``); an episode already trained on
  (``duplicate``) is never trained on twice.
- The carry (turns of episodes still running at the end of the last bag) is not saved with the
  learner's state: the state names the bags that hold it and the episodes it had, and a restarted
  learner re-reads those bags (:func:`restore_carry`), so an episode spanning a restart is whole.
"""
from __future__ import annotations

from pathlib import Path

from vla_rl_ros.nodes.bag_episodes import EpisodeSteps, episode_key_text
from vla_rl_ros.nodes.bag_recovery import BAG_NAME, bag_iteration
from vla_rl_ros.nodes.trajectory_bags import carry_bags, read_episodes

MAX_REMEMBERED_EPISODES = 200_000
"""Trained episode keys kept in the state for the exactly-once check (oldest forgotten first)."""


def complete_bags(bag_dir: str | Path) -> list[Path]:
    """The complete ``iter_NNNNNN`` bags of ``bag_dir``, in iteration order."""
    root = Path(bag_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if BAG_NAME.match(p.name) and (p / "metadata.yaml").is_file()]
    return sorted(p.resolve() for p in found) if found else []


def inside(path: str | Path, root: str | Path) -> bool:
    """True when ``path`` resolves to somewhere under ``root`` (a notice may name any path)."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


class EpisodeLedger:
    """Keys of the episodes trained on, and counts of those left out (by reason)."""

    def __init__(self) -> None:
        self.trained: list[str] = []
        self._seen: set[str] = set()
        self.counts: dict[str, int] = {}

    def count(self, reason: str, number: int = 1) -> None:
        """Add ``number`` episodes left out for ``reason``."""
        if number:
            self.counts[reason] = self.counts.get(reason, 0) + int(number)

    def select(self, finished: list[EpisodeSteps], version: int,
               max_lag: int) -> tuple[list[EpisodeSteps], dict[str, int]]:
        """The episodes to train on at learner ``version``, and how many were left out per reason."""
        chosen, left_out = [], {}
        for steps in finished:
            versions = steps.policy_versions
            if episode_key_text(steps.key) in self._seen:
                reason = "duplicate"
            elif versions and max(versions) > version:
                reason = "foreign"
            elif versions and version - min(versions) > max_lag:
                reason = "stale"
            else:
                chosen.append(steps)
                continue
            left_out[reason] = left_out.get(reason, 0) + 1
        return chosen, left_out

    def add(self, keys) -> None:
        """Record episodes as trained on."""
        for key in keys:
            text = episode_key_text(key)
            if text not in self._seen:
                self._seen.add(text)
                self.trained.append(text)
        while len(self.trained) > MAX_REMEMBERED_EPISODES:
            self._seen.discard(self.trained.pop(0))

    def state_dict(self) -> dict:
        """Plain containers for the learner's state file."""
        return {"trained": list(self.trained), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.trained = [str(k) for k in state.get("trained", [])]
        self._seen = set(self.trained)
        self.counts = {str(k): int(v) for k, v in state.get("counts", {}).items()}


def carry_reference(carry: dict, processed: list[str]) -> dict:
    """What the state keeps of the carry: the bags to re-read and the episodes to keep from them.

    The bags run from the first one holding a turn of a carried episode to the last one read (the
    pending observations at its end are needed too), so re-reading them in order rebuilds it.
    """
    holding = set(carry_bags(carry))
    start = next((i for i, path in enumerate(processed) if path in holding), max(len(processed) - 1, 0))
    return {"bags": list(processed[start:]),
            "episodes": [list(key) for key in carry.get("episodes", {})],
            "evicted": int(carry.get("evicted", 0)), "invalid": dict(carry.get("invalid", {}))}


def restore_carry(reference: dict, chunk_size: int | None, image_size: int | None) -> dict:
    """The carry of :func:`carry_reference`, rebuilt by re-reading its bags (those still on disk)."""
    bags = [b for b in reference.get("bags", []) if (Path(b) / "metadata.yaml").is_file()]
    if not bags:
        return {}
    _, carry = read_episodes(bags, None, chunk_size, image_size)
    keep = {tuple(key) for key in reference.get("episodes", [])}
    carry["episodes"] = {k: v for k, v in carry["episodes"].items() if k in keep}
    carry["evicted"] = int(reference.get("evicted", 0))
    carry["invalid"] = dict(reference.get("invalid", {}))
    return carry


def bag_order(path: str | Path) -> tuple[int, str]:
    """Sort key of a bag path: its iteration, then its path."""
    number = bag_iteration(Path(path))
    return (number if number is not None else -1, str(path))


class GroupAssembler:
    """Holds finished episodes until their context's group is whole, for the group estimators.

    ``vla-rl train`` runs each context's ``group_size`` episodes in one iteration; in the graph
    they finish on several envs at different times and a bag closes after a number of episodes,
    so a group is often split over two bags (and the bridge's own first picks are groups of one).
    Learning from the pieces wastes most of the comparisons: measured on the toy graph, 64
    episodes made 21 groups instead of 8 and learning stalled. So an episode waits until its
    context has ``group_size`` episodes, or until it has waited ``max_wait`` updates (then its
    group is learned from as it is). Waiting episodes live in memory only: a restarted learner
    counts them (``learner/rejected_episodes_lost_waiting``) instead of training on them.
    """

    def __init__(self, group_size: int, max_wait: int) -> None:
        self.group_size, self.max_wait = int(group_size), int(max_wait)
        self.waiting: dict[tuple[int, int], list[list]] = {}
        """context -> [[key, episode, updates waited], ...]"""

    def __len__(self) -> int:
        return sum(len(members) for members in self.waiting.values())

    def keys(self) -> list[str]:
        """Keys of the episodes waiting (saved with the learner's state, to count them on a restart)."""
        return [episode_key_text(key) for members in self.waiting.values() for key, _, _ in members]

    def release(self, keyed: list[tuple]) -> list[tuple]:
        """Add ``(key, episode)`` pairs; return those of whole or long-waiting groups, by context."""
        for key, episode in keyed:
            self.waiting.setdefault((int(episode.task_id), int(episode.init_state_id)), []).append(
                [key, episode, 0])
        out = []
        for context in list(self.waiting):
            members = self.waiting[context]
            if len(members) >= self.group_size or max(age for _, _, age in members) >= self.max_wait:
                out += [(key, episode) for key, episode, _ in self.waiting.pop(context)]
            else:
                for member in members:
                    member[2] += 1
        return out
