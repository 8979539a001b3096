"""Configuration of the environments (LIBERO suite, tasks, rendering, vectorisation)."""
from __future__ import annotations

from dataclasses import dataclass, field

from vla_rl_ros.core.config_io import check

KNOWN_BACKENDS = ("libero", "toy")
KNOWN_RENDERERS = ("egl", "osmesa")


@dataclass
class EnvConfig:
    """Which tasks to run and how the simulator renders them."""

    backend: str = "libero"
    """'libero' (MuJoCo scenes) or 'toy' (a tiny VLA-shaped environment for fast tests)."""
    suite: str = "libero_object"
    """LIBERO suite name, e.g. libero_spatial, libero_object, libero_goal, libero_10, libero_90."""
    task_ids: list[int] = field(default_factory=lambda: [1, 5, 6])
    """Task indices within the suite that training and evaluation use. The default: three
    LIBERO-Object tasks (cream cheese, tomato sauce, butter into the basket), small enough for a
    2-core CPU; the expert finishes them in about 110 of the 280 allowed steps."""
    num_envs: int = 2
    """Parallel environment worker processes (2 is the useful maximum on a 2-core CPU)."""
    image_size: int = 128
    """Camera resolution (square) rendered by the simulator."""
    wrist_camera: bool = False
    """Also render the wrist camera."""
    renderer: str = "egl"
    """MuJoCo GL backend: 'egl' or 'osmesa'."""
    render_gpus: list[int] = field(default_factory=list)
    """GPU ids that render, assigned round-robin to workers; empty = default device."""
    max_episode_steps: int = 0
    """Episode cap in control steps; 0 = the suite's standard cap."""
    settle_steps: int = 10
    """No-op steps after reset before the policy acts (standard LIBERO evaluation)."""
    num_train_init_states: int = 40
    """Init states 0..N-1 of each task are for training; the rest are held out for evaluation."""
    seed: int = 0
    """Environment seed."""
    render: bool = True
    """Render cameras; off gives black frames (expert dry runs, fast tests, benchmarks)."""
    visual_mesh_faces: int = 0
    """Render each visual-only mesh from a decimated copy of at most this many triangles (>= 16);
    collision meshes and physics are unchanged. 0 = the original meshes: the shipped policy, its
    demonstrations and PRM saw original renderings, and decimation changes the pixels
    (docs/results/libero_env/frame_cost_decimated.json measures both cost and change)."""
    visual_mesh_cache_dir: str = ""
    """Where decimated copies are cached (named by source hash and cap, built once); empty =
    ~/.cache/vla_rl_ros/visual_meshes."""
    step_timeout_s: float = 60.0
    """A worker that does not finish a step within this is restarted and its episode aborted."""
    reset_timeout_s: float = 300.0
    """Same for a reset (which may build a new scene: 3-7 s on an idle CPU, much more under load)."""
    toy_step_size: float = 0.1
    """Toy backend: how far one action moves the gripper at most (0.2 with ``toy_reach_only`` gives
    the 5-decode episodes the learning tests use: a fresh policy succeeds ~5 %, the oracle always)."""
    toy_reach_only: bool = False
    """Toy backend: reaching the target is success, no gripper close needed (the easier variant)."""

    def __post_init__(self) -> None:
        check(self.backend in KNOWN_BACKENDS, "env.backend", self.backend, f"one of {KNOWN_BACKENDS}")
        check(self.renderer in KNOWN_RENDERERS, "env.renderer", self.renderer, f"one of {KNOWN_RENDERERS}")
        check(len(self.task_ids) > 0, "env.task_ids", self.task_ids, "at least one task")
        check(all(t >= 0 for t in self.task_ids), "env.task_ids", self.task_ids, "indices must be >= 0")
        check(1 <= self.num_envs <= 256, "env.num_envs", self.num_envs, "between 1 and 256")
        check(16 <= self.image_size <= 1024, "env.image_size", self.image_size, "between 16 and 1024")
        check(self.max_episode_steps >= 0, "env.max_episode_steps", self.max_episode_steps, "must be >= 0")
        check(self.visual_mesh_faces == 0 or self.visual_mesh_faces >= 16, "env.visual_mesh_faces",
              self.visual_mesh_faces, "0 (original meshes) or >= 16")
        check(self.settle_steps >= 0, "env.settle_steps", self.settle_steps, "must be >= 0")
        check(self.step_timeout_s > 0, "env.step_timeout_s", self.step_timeout_s, "must be > 0")
        check(0 < self.toy_step_size <= 1, "env.toy_step_size", self.toy_step_size, "in (0, 1]")
        check(self.reset_timeout_s > 0, "env.reset_timeout_s", self.reset_timeout_s, "must be > 0")
        check(1 <= self.num_train_init_states < 50, "env.num_train_init_states",
              self.num_train_init_states, "between 1 and 49 (LIBERO has 50 init states per task)")
