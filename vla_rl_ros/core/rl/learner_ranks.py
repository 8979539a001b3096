"""The learner node's data-parallel ranks: rank 0 runs the node, the others only its PPO updates.

Under ``torchrun --nproc_per_node N -m vla_rl_ros.nodes.learner_node`` rank 0 is the ROS node:
it alone subscribes to the bag notices, reads the bags, scores and bootstraps the episodes,
builds the batch, writes the adapters and the learner state, and publishes ``PolicyVersion``.
The other ranks never touch ROS or the bags: they build the same policy from the configuration
rank 0 sends, then wait for commands. For each update rank 0 splits the batch's transitions into
N contiguous shards and scatters them with the update's random state; every rank runs
``PPOTrainer.update`` on its shard, which is the one-process update of the whole batch (see
``core/rl/ppo_trainer.py``). Rank 0 gathers and decodes nothing the others could do faster:
in an update, the forward and backward passes of the minibatches are what costs.

An update that fails on one rank (not a non-finite loss, which every rank skips together, but an
exception) stops the job: the other ranks are inside the same update and cannot be brought back
in step. Resume works with any number of ranks, and is exact: the learner's state (adapters, optimizer,
curriculum, processed bags) is rank 0's alone, and the first update after a start sends rank 0's
weights and optimizer state to the others.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from vla_rl_ros.core.rl.buffer import RolloutBatch
from vla_rl_ros.core.rl.distributed import DistributedError, Ranks, shard_bounds
from vla_rl_ros.core.rl.ppo_trainer import PPOTrainer


class RanksOutOfStep(SystemExit):
    """Rank 0's update failed or lost a rank: the learner process must end (exit code 1).

    A SystemExit, not an Exception: the node's callbacks count and survive every Exception (one
    bad message must not kill it), but ranks out of step cannot be repaired by going on.
    """


FLAT_FIELDS = ("images", "instructions", "proprio", "tokens", "log_probs", "old_values", "advantages",
               "returns")
"""The per-transition fields of a RolloutBatch, the ones an update reads."""
TIME_MAJOR_FIELDS = ("rewards", "values", "next_values", "done", "terminated", "mask", "advantages_tm")


def split_batch(batch: RolloutBatch, parts: int) -> list[RolloutBatch | None]:
    """``parts`` contiguous shards of the batch's transitions (None for an empty shard).

    The time-major tensors (rewards, values, GAE inputs) stay with shard 0, where the update's
    finiteness check reads them; the other shards carry empty ones.
    """
    bounds = shard_bounds(batch.size, parts)
    empty = torch.zeros(0, 0)
    shards: list[RolloutBatch | None] = []
    for part in range(parts):
        start, end = bounds[part], bounds[part + 1]
        if start == end:
            shards.append(None)
            continue
        flat = {name: getattr(batch, name)[start:end] for name in FLAT_FIELDS}
        time_major = {} if part == 0 else {name: empty for name in TIME_MAJOR_FIELDS}
        shards.append(dataclasses.replace(batch, **flat, **time_major))
    return shards


class LeaderTrainer:
    """Rank 0's trainer: :class:`PPOTrainer`'s interface, each update spread over the ranks."""

    def __init__(self, policy: Any, cfg: Any, experiment: Any, ranks: Ranks) -> None:
        """Start the other ranks on ``experiment`` (the node's configuration) with PPO settings ``cfg``."""
        self.ranks = ranks
        self.trainer = PPOTrainer(policy, cfg, ranks)
        ranks.scatter_objects([{"op": "start", "config": experiment, "ppo": cfg}] * ranks.world_size,
                              "learner start")
        self.synced = False
        self.failed = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.trainer, name)

    def update(self, batch: RolloutBatch, generator: torch.Generator | None = None) -> dict[str, float]:
        """:meth:`PPOTrainer.update` of ``batch``, each rank on a shard of it."""
        generator = generator if generator is not None else torch.Generator()
        shards = split_batch(batch, self.ranks.world_size)
        commands = [{"op": "update", "batch": shard, "generator": generator.get_state(),
                     "sync": not self.synced} for shard in shards]
        mine = self.ranks.scatter_objects(commands, "update command")
        if self.failed:
            raise RanksOutOfStep(self.failed)
        try:
            if not self.synced:  # after the node's resume: the others get rank 0's weights and optimizer
                self.trainer.sync_ranks()
                self.synced = True
            return self.trainer.update(mine["batch"], generator)
        except DistributedError as err:
            self.failed = str(err)
            raise RanksOutOfStep(self.failed) from err
        except Exception as err:
            # The other ranks are inside the same update, waiting for rank 0's next collective:
            # they cannot be brought back in step, so the job stops (the last version is intact).
            self.failed = (f"rank 0's part of a data-parallel update failed ({type(err).__name__}: {err}); "
                           "the ranks are out of step, so the learner stops. The last adapter version and "
                           "learner state are intact")
            raise RanksOutOfStep(self.failed) from err

    def state_dict(self) -> dict[str, Any]:
        """:meth:`PPOTrainer.state_dict` (rank 0's, the same as every rank's)."""
        return self.trainer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore rank 0's trainer; the other ranks receive it before the next update."""
        self.trainer.load_state_dict(state)
        self.synced = False


def stop_workers(ranks: Ranks) -> None:
    """Tell the other ranks that rank 0 is done (they exit 0); quiet if they are gone already."""
    try:
        ranks.scatter_objects([{"op": "stop"}] * ranks.world_size, "learner stop")
    except DistributedError:
        pass


def serve_updates(ranks: Ranks) -> int:
    """A rank > 0 of the learner: build the policy rank 0 describes, then run its updates until 'stop'."""
    from vla_rl_ros.core.rl.train_loop import build_policy
    command = ranks.scatter_objects(None, "learner start")
    if command["op"] == "stop":
        return 0
    cfg = command["config"]
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    torch.manual_seed(cfg.train.seed)  # what the node does before it builds its policy
    trainer = PPOTrainer(build_policy(cfg), command["ppo"], ranks)
    generator = torch.Generator()
    while True:
        command = ranks.scatter_objects(None, "learner command")
        if command["op"] == "stop":
            return 0
        if command["sync"]:
            trainer.sync_ranks()
        generator.set_state(command["generator"])
        trainer.update(command["batch"], generator)
