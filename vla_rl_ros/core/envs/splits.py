"""Init-state splits: training uses ids below ``num_train_init_states``, evaluation the rest.

Keeping the split in one place is what prevents the known leak of public RL-for-VLA code
(training on the very init states used for evaluation).
"""
from __future__ import annotations

from vla_rl_ros.core.config_io import check

LIBERO_INIT_STATES_PER_TASK = 50
TRAIN_LAYOUT_BASE = 1_000
"""Ids from here on are fresh layouts: the scene's own random object placement, seeded by the id
(LIBERO's fixed init states were drawn by the same sampler). Ids 1,000-999,999 are for training."""
HELDOUT_LAYOUT_BASE = 1_000_000
"""Fresh layouts from here on are held out: evaluation only, never trained on."""
MAX_LAYOUT_ID = 2**32 - 1
"""Layout ids seed numpy's global generator, which takes 32-bit seeds."""


def is_fresh_layout(init_state_id: int) -> bool:
    """True for a seeded random layout, False for one of the task's fixed init states."""
    return int(init_state_id) >= TRAIN_LAYOUT_BASE


def check_init_state_id(init_state_id: int, num_init_states: int = LIBERO_INIT_STATES_PER_TASK) -> None:
    """Raise ValueError unless the id is a fixed init state or a fresh layout id."""
    value = int(init_state_id)
    if not (0 <= value < num_init_states or TRAIN_LAYOUT_BASE <= value <= MAX_LAYOUT_ID):
        raise ValueError(f"init state {value} does not exist: ids are 0..{num_init_states - 1} "
                         f"(fixed init states) or {TRAIN_LAYOUT_BASE}..{MAX_LAYOUT_ID} (fresh layouts)")


def is_held_out(init_state_id: int, num_train_init_states: int) -> bool:
    """True when evaluation owns the id: a held-out init state or a held-out layout."""
    value = int(init_state_id)
    return (num_train_init_states <= value < LIBERO_INIT_STATES_PER_TASK) or value >= HELDOUT_LAYOUT_BASE


def training_layout(rng) -> int:
    """A fresh training layout id drawn with ``rng`` (a numpy Generator)."""
    return int(rng.integers(TRAIN_LAYOUT_BASE, HELDOUT_LAYOUT_BASE))


def held_out_contexts(task_ids: list[int], count: int, num_train_init_states: int) -> list[tuple[int, int]]:
    """``count`` held-out (task, init state) pairs, tasks round-robin.

    The held-out init states come first, then held-out layouts, so an evaluation can grow beyond
    the 10 held-out states per task without repeating an episode or touching a training context.
    """
    states = eval_init_states(num_train_init_states)
    pairs = []
    for k in range(count):
        task, round_ = task_ids[k % len(task_ids)], k // len(task_ids)
        pairs.append((task, states[round_] if round_ < len(states)
                      else HELDOUT_LAYOUT_BASE + round_ - len(states)))
    return pairs


def train_init_states(num_train_init_states: int,
                      num_init_states: int = LIBERO_INIT_STATES_PER_TASK) -> list[int]:
    """Init-state ids reserved for training (demonstrations, SFT, RL rollouts)."""
    check(0 < num_train_init_states < num_init_states, "env.num_train_init_states", num_train_init_states,
          f"between 1 and {num_init_states - 1} so that some init states stay held out")
    return list(range(num_train_init_states))


def eval_init_states(num_train_init_states: int,
                     num_init_states: int = LIBERO_INIT_STATES_PER_TASK) -> list[int]:
    """Held-out init-state ids: the only ones evaluation uses by default."""
    check(0 < num_train_init_states < num_init_states, "env.num_train_init_states", num_train_init_states,
          f"between 1 and {num_init_states - 1} so that some init states stay held out")
    return list(range(num_train_init_states, num_init_states))
