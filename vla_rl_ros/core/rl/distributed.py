"""Data-parallel training on ``torch.distributed``: ranks, shards, gradient all-reduce, failures.

``torchrun --nproc_per_node N`` (or ``--nnodes``) starts N copies of ``vla-rl train`` or of the
learner node; each reads its rank from the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). Without those variables, or with a world of
one, :func:`from_environment` returns None and every caller keeps its single-process path.

What is shared and how:

- Gradients of the trainable tensors (LoRA adapters and value head: all that PPO trains) are
  summed over the ranks in one flat all-reduce per optimizer step. Each rank has already
  weighted its part by its share of the global minibatch (see ``PPOTrainer.update``), so the sum
  is the gradient of the whole minibatch's mean loss: the count-weighted average of the ranks'
  gradients, the plain average when the shares are equal. Nothing else of the model is
  replicated by torch (no DDP wrapper): the frozen base is never trained, and the LoRA/value
  parameters are few, so one bucket per step is all DDP would do here.
- Small Python objects (episode summaries, commands of the learner node, optimizer state on a
  resync) travel over a separate gloo group with a long timeout, whatever the tensor backend.
- The tensor backend is NCCL when the policy is on CUDA, gloo on the CPU.

A collective that fails (another rank died, was killed, or cannot be reached) raises
:class:`DistributedError`, which says so and that the checkpoint is intact: only rank 0 writes
checkpoints, always atomically, and never from inside a collective. torchrun then stops the
other ranks and exits non-zero, naming the rank that failed first.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import torch

T = TypeVar("T")

OBJECT_TIMEOUT_S = 7 * 24 * 3600
"""Timeout of the object group. Ranks of the learner node wait there for rank 0's next command,
for as long as the graph takes to record a bag; a dead rank is still noticed at once, because its
sockets close (and torchrun stops the job)."""
TENSOR_TIMEOUT_S = 1800
"""Timeout of the tensor collectives (torch's own default): the longest one rank may run ahead of
another inside one update or rollout."""
RANK_SEED_STRIDE = 10_007
"""Rank r's sampling streams are seeded ``seed + offset + r * RANK_SEED_STRIDE``: rank 0 keeps the
single-process seeds, the other ranks get streams of their own."""


class DistributedError(RuntimeError):
    """A collective failed: another rank died, was killed, hung or became unreachable."""


@dataclass
class Ranks:
    """This process's place in the job and the collectives the package uses."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    """Backend of the tensor collectives: 'nccl' (CUDA) or 'gloo' (CPU)."""
    device: torch.device
    """Where tensors for the tensor collectives must live."""
    objects: Any = None
    """The gloo process group of the object collectives (None: the default group)."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, adapters, logs and speaks ROS."""
        return self.rank == 0

    # ------------------------------------------------------------------ collectives
    def _run(self, what: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except DistributedError:
            raise
        except (RuntimeError, ConnectionError) as err:  # gloo/NCCL report a lost peer as RuntimeError
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed ({str(err).splitlines()[0][:300]}). "
                "Another rank has died, was killed, hung or cannot be reached; the job stops here. "
                "Checkpoints are written by rank 0 only, atomically and outside collectives, so the last "
                "one is intact: run the same command again (with any number of ranks) to resume") from err

    def all_reduce_sum(self, tensor: torch.Tensor, what: str = "all-reduce") -> torch.Tensor:
        """Sum ``tensor`` over the ranks (in place on a copy on :attr:`device`); returns it."""
        import torch.distributed as dist
        moved = tensor.detach().to(self.device).clone()
        self._run(what, lambda: dist.all_reduce(moved))
        return moved.to(tensor.device)

    def any(self, flag: bool, what: str = "agreement") -> bool:
        """True on every rank when ``flag`` is true on any rank (one decision for all)."""
        return bool(self.all_reduce_sum(torch.tensor([float(bool(flag))]), what).item() > 0)

    def all_gather_objects(self, obj: Any, what: str = "gather") -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (pickled: small objects only)."""
        import torch.distributed as dist
        out: list[Any] = [None] * self.world_size
        self._run(what, lambda: dist.all_gather_object(out, obj, group=self.objects))
        return out

    def broadcast_object(self, obj: Any, what: str = "broadcast") -> Any:
        """Rank 0's ``obj`` on every rank (the others pass anything, e.g. None)."""
        import torch.distributed as dist
        box = [obj]
        self._run(what, lambda: dist.broadcast_object_list(box, src=0, group=self.objects))
        return box[0]

    def scatter_objects(self, objs: Sequence[Any] | None, what: str = "scatter") -> Any:
        """Rank 0 passes one object per rank; every rank returns its own."""
        import torch.distributed as dist
        out: list[Any] = [None]
        self._run(what, lambda: dist.scatter_object_list(
            out, list(objs) if self.is_main else None, src=0, group=self.objects))
        return out[0]

    def broadcast_tensors(self, tensors: Sequence[torch.Tensor], what: str = "broadcast") -> None:
        """Overwrite ``tensors`` on every rank with rank 0's (in place)."""
        import torch.distributed as dist
        if not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).to(self.device, torch.float32) for t in tensors])
        self._run(what, lambda: dist.broadcast(flat, src=0))
        offset = 0
        with torch.no_grad():
            for tensor in tensors:
                count = tensor.numel()
                tensor.copy_(flat[offset:offset + count].view_as(tensor).to(tensor.device, tensor.dtype))
                offset += count

    def all_reduce_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """Sum the gradients of ``params`` over the ranks in one flat buffer.

        A parameter without a gradient on a rank (it saw no transition of the minibatch) adds
        zeros; a parameter without a gradient on every rank keeps ``grad = None``, as it would
        in one process, so that Adam skips it the same way.
        """
        if not params:
            return
        parts = [p.grad.detach().reshape(-1).to(self.device, torch.float32) if p.grad is not None
                 else torch.zeros(p.numel(), device=self.device) for p in params]
        flags = torch.tensor([float(p.grad is not None) for p in params], device=self.device)
        flat = self.all_reduce_sum(torch.cat(parts + [flags]), "gradient all-reduce")
        seen = flat[-len(params):]
        offset = 0
        for index, param in enumerate(params):
            count = param.numel()
            if seen[index] > 0:
                param.grad = flat[offset:offset + count].view_as(param).to(param.device, param.dtype).clone()
            else:
                param.grad = None
            offset += count

    def barrier(self, what: str = "barrier") -> None:
        """Wait for every rank (over the object group)."""
        import torch.distributed as dist
        self._run(what, lambda: dist.barrier(group=self.objects))


def backend_for(device: str) -> str:
    """'nccl' for a CUDA policy device when CUDA is there, else 'gloo'."""
    return "nccl" if str(device).startswith("cuda") and torch.cuda.is_available() else "gloo"


def world_size_from_environment() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def from_environment(device: str = "cpu") -> Ranks | None:
    """The job torchrun started this process in, initialised; None for a single process.

    Joins the default process group (``env://``) if nobody has yet, with the backend of
    :func:`backend_for` ``device``; for NCCL it first selects GPU ``LOCAL_RANK``, so that a
    policy on ``cuda`` lands on this rank's GPU. Idempotent: a second call returns the same job.
    """
    import torch.distributed as dist
    if world_size_from_environment() <= 1:
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = backend_for(device)
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=TENSOR_TIMEOUT_S))
    backend = dist.get_backend()
    global _OBJECTS
    if _OBJECTS is None:
        _OBJECTS = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=OBJECT_TIMEOUT_S))
    on_gpu = backend == "nccl"
    tensor_device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    return Ranks(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                 backend=str(backend), device=tensor_device, objects=_OBJECTS)


_OBJECTS: Any = None


def shutdown() -> None:
    """Leave the process group (at the end of a job; harmless without one)."""
    import torch.distributed as dist
    global _OBJECTS
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _OBJECTS = None


def shard_bounds(count: int, world_size: int) -> list[int]:
    """Boundaries of ``world_size`` contiguous, near-equal shards of ``count`` items.

    Shard r is ``[bounds[r], bounds[r + 1])``; the first ``count % world_size`` shards get one more.
    """
    if world_size < 1 or count < 0:
        raise ValueError(f"shard_bounds: count {count} and world size {world_size} must be >= 0 and >= 1")
    base, extra = divmod(count, world_size)
    bounds = [0]
    for rank in range(world_size):
        bounds.append(bounds[-1] + base + (1 if rank < extra else 0))
    return bounds


def group_shares(plan: Sequence[T], group_size: int, world_size: int) -> list[list[T]]:
    """Split a rollout plan into ``world_size`` contiguous shares of whole groups.

    A group (``group_size`` consecutive assignments of one context) never spans two ranks, so
    group advantages and the dynamic-sampling filter stay local to the rank that collected it.
    """
    groups = [list(plan[i:i + group_size]) for i in range(0, len(plan), max(1, group_size))]
    bounds = shard_bounds(len(groups), world_size)
    return [[a for g in groups[bounds[r]:bounds[r + 1]] for a in g] for r in range(world_size)]


def params_fingerprint(module: Any) -> torch.Tensor:
    """float64 [2]: sum and sum of squares of every parameter of ``module`` (a cheap identity check)."""
    total = torch.zeros(2, dtype=torch.float64)
    for param in module.parameters():
        value = param.detach().double()
        total += torch.stack([value.sum(), (value * value).sum()]).cpu()
    return total
