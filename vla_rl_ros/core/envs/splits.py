"""Init-state splits: training uses ids below ``num_train_init_states``, evaluation the rest.

Keeping the split in one place is what prevents the known leak of public RL-for-VLA code
(training on the very init states used for evaluation).
"""
from __future__ import annotations

from vla_rl_ros.core.config_io import check

LIBERO_INIT_STATES_PER_TASK = 50


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
