"""ForwardOnce: skipping robosuite's repeated forward inside a control step changes nothing."""
import contextlib

import numpy as np

from vla_rl_ros.core.envs.expert import ExpertConfig, ScriptedExpert
from vla_rl_ros.core.envs.libero_env import LiberoEnv


def expert_episode(skip_repeated_forward: bool):
    """A scripted cream-cheese episode (grasp, carry, release: contacts throughout)."""
    env = LiberoEnv("libero_object", image_size=32, render=False)
    try:
        env.reset(1, 2)
        if not skip_repeated_forward:
            env.forward_once = contextlib.nullcontext()
        expert = ScriptedExpert(ExpertConfig())
        expert.reset(env)
        states, proprio = [], []
        for _ in range(env.max_episode_steps):
            result = env.step(expert.act(env))
            states.append(env.sim.env.sim.get_state().flatten())
            proprio.append(result.observation.proprio)
            if result.done:
                break
        skipped = getattr(env.forward_once, "skipped", 0)
        simulator = env.sim.env.sim
        assert "forward" not in vars(simulator) and "step" not in vars(simulator)  # unwrapped after each step
        return result.success, np.stack(states), np.stack(proprio), skipped
    finally:
        env.close()


def test_an_expert_episode_is_bit_identical_with_the_repeated_forward_skipped():
    success, states, proprio, skipped = expert_episode(skip_repeated_forward=True)
    reference_success, reference_states, reference_proprio, none_skipped = expert_episode(False)
    assert success and reference_success
    assert states.shape == reference_states.shape  # the same number of steps
    assert np.array_equal(states, reference_states) and np.array_equal(proprio, reference_proprio)
    # One forward saved per physics substep: 25 substeps per 20 Hz control step.
    assert skipped == 25 * len(states) and none_skipped == 0
