"""Group-relative advantages, dynamic sampling, solved-context skipping and the held-out split
(hand-checked values), plus the training loop's group iteration on the toy backend."""
import numpy as np
import pytest

from vla_rl_ros.core.config import load_config
from vla_rl_ros.core.envs.splits import (HELDOUT_LAYOUT_BASE, TRAIN_LAYOUT_BASE, check_init_state_id,
                                         held_out_contexts, is_held_out)
from vla_rl_ros.core.rl.groups import SolvedContexts, group_advantages, group_ids, informative_groups
from vla_rl_ros.core.rl.rollout import Episode
from vla_rl_ros.core.rl.learner import draw_contexts
from vla_rl_ros.core.rl.train_loop import TrainingRun


def test_leave_one_out_and_grpo_by_hand():
    returns = np.array([1.0, 0.0, 0.0, 1.0, 5.0, 2.0])
    groups = np.array([0, 0, 0, 0, 1, 2])
    loo = group_advantages(returns, groups, "loo")
    # Group 0: each success against the mean of the other three (1/3), each failure against 2/3.
    np.testing.assert_allclose(loo[:4], [1 - 1 / 3, -2 / 3, -2 / 3, 1 - 1 / 3])
    np.testing.assert_allclose(loo[4:], [0.0, 0.0])  # a group of one has no baseline
    grpo = group_advantages(returns, groups, "grpo")
    np.testing.assert_allclose(grpo[:4], [1.0, -1.0, -1.0, 1.0], atol=1e-5)
    assert loo[:4].sum() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="non-finite"):
        group_advantages(np.array([np.nan, 1.0]), np.array([0, 0]))
    with pytest.raises(ValueError, match="unknown"):
        group_advantages(returns, groups, "critic")


def test_dynamic_sampling_keeps_only_groups_with_mixed_outcomes():
    successes = np.array([1, 1, 0, 0, 0, 1, 1, 1, 0])
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4])
    np.testing.assert_array_equal(informative_groups(successes, groups),
                                  [False, False, False, False, True, True, False, False, False])


def test_a_context_solved_twice_in_a_row_is_skipped_until_it_fails():
    solved = SolvedContexts(streak=2)
    solved.update((1, 3), [True] * 8)
    assert not solved.skipped((1, 3))
    solved.update((1, 3), [True] * 8)
    assert solved.skipped((1, 3)) and not solved.skipped((1, 4))
    restored = SolvedContexts(2)
    restored.load_state_dict(solved.state_dict())
    assert restored.skipped((1, 3))
    solved.update((1, 3), [True] * 7 + [False])
    assert not solved.skipped((1, 3))
    assert not SolvedContexts(streak=0).skipped((1, 3))


def test_group_ids_follow_the_context():
    contexts = [(1, 2), (1, 2), (5, 2), (1, 2)]
    episodes = [Episode(task_id=t, init_state_id=i, instruction="") for t, i in contexts]
    np.testing.assert_array_equal(group_ids(episodes), [0, 0, 1, 0])


def test_training_never_draws_a_held_out_context():
    rng = np.random.default_rng(0)
    solved = SolvedContexts(2)
    for task in (1, 5, 6):
        for init in range(40):
            if init % 3:
                solved.update((task, init), [True])
                solved.update((task, init), [True])
    drawn = []
    for _ in range(300):
        drawn += draw_contexts(4, [1, 5, 6, 1], rng, 40, fresh_fraction=0.5, solved=solved)
    ids = {i for _, i in drawn}
    assert all(not is_held_out(i, 40) for i in ids)
    assert all(i < 40 or TRAIN_LAYOUT_BASE <= i < HELDOUT_LAYOUT_BASE for i in ids)
    assert any(i >= TRAIN_LAYOUT_BASE for i in ids) and any(i < 40 for i in ids)
    fixed = [(t, i) for t, i in drawn if i < 40]
    assert sum(solved.skipped(c) for c in fixed) < 0.05 * len(fixed)  # solved ones redrawn


def test_held_out_evaluation_grows_beyond_the_held_out_states_without_repeats():
    pairs = held_out_contexts([1, 5, 6], 150, 40)
    assert len(set(pairs)) == 150 and all(is_held_out(i, 40) for _, i in pairs)
    assert sorted({i for _, i in pairs if i < 50}) == list(range(40, 50))
    assert sum(1 for t, _ in pairs if t == 5) == 50
    for bad in (-1, 50, 999, 2**32):
        with pytest.raises(ValueError, match="does not exist"):
            check_init_state_id(bad)


def toy_cfg(tmp_path, *extra):
    return load_config(None, ["env.backend=toy", "env.task_ids=[0,1]", "env.num_envs=4", "env.image_size=32",
                              "policy.size=tiny", "policy.image_size=32", "policy.chunk_size=4",
                              "train.episodes_per_iter=16", "train.group_size=8", "train.iterations=2",
                              "train.eval_every=0", f"train.output_dir={tmp_path}", "train.torch_threads=1",
                              *extra])


def test_an_iteration_of_uniform_groups_makes_no_update(tmp_path):
    run = TrainingRun(toy_cfg(tmp_path), progress_bar=False, tensorboard=False)
    run.env = __import__("vla_rl_ros.core.envs.toy", fromlist=["x"]).make_toy_vector_env(run.cfg.env)
    metrics = run.train_iteration()  # a fresh tiny policy never succeeds: every group is all-fail
    assert metrics["rollout/groups"] == 2.0 and metrics["rollout/groups_kept"] == 0.0
    assert metrics["ppo/no_update"] == 1.0 and run.trainer.updates == 0
    assert metrics["rollout/env_steps"] == 16 * 20 and metrics["rollout/decisions"] == 16 * 5
