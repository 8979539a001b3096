"""Experiment (not a test): what a LIBERO frame costs with decimated visual meshes, and what changes.

The CPU frame of the default scenes is mostly the visual meshes' triangles (render_cost.py: 31 ms
without multisampling, 3.7 ms with the visual geoms hidden), so ``env.visual_mesh_faces`` renders
decimated copies of them. For each task of the default set this builds the scene with the original
meshes and with each face cap, drives all of them through the same actions (physics is unchanged,
so the states are the same; checked), and at a few states measures milliseconds per frame through
``LiberoEnv.render_camera`` (what a rollout pays; rounds alternate between the scenes so load
drift hits all alike) and how far each decimated frame is from the original one::

    MUJOCO_GL=egl nice -n 19 .venv/bin/python tools/experiments/frame_cost.py \\
        [--tasks 1,5,6] [--faces 2000,4000,8000] [--output docs/results/libero_env/frame_cost_decimated.json]

The machine's load average is recorded: figures taken beside another job are slower than idle ones.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the repository root, for vla_rl_ros

STATE_STEPS = (0, 25, 50)
"""Control steps after the settle steps at which frames are measured (the arm moves in between)."""


def arm_actions(steps: int, seed: int) -> np.ndarray:
    """A smooth, seeded arm motion (gripper open), so later states show the arm elsewhere."""
    rng = np.random.default_rng(seed)
    waypoints = rng.uniform(-0.6, 0.6, size=(steps // 10 + 2, 6))
    positions = np.linspace(0, len(waypoints) - 1, steps)
    motion = np.stack([np.interp(positions, np.arange(len(waypoints)), waypoints[:, d]) for d in range(6)], 1)
    return np.column_stack([motion, -np.ones(steps)]).astype(np.float32)


def make_current(env) -> None:
    """Point GL at ``env``'s context: several scenes render from this one thread, and robosuite
    makes a context current only when it creates it."""
    env.sim.env.sim._render_context_offscreen.gl_ctx.make_current()


def timed_frames(env, frames: int) -> tuple[float, np.ndarray]:
    """Milliseconds per frame of ``frames`` renders of the agentview camera, and the last frame."""
    make_current(env)
    start = time.perf_counter()
    for _ in range(frames):
        image = env.render_camera("agentview")
    return 1000 * (time.perf_counter() - start) / frames, image


def measure_task(suite: str, task: int, caps: list[int], size: int, frames: int, rounds: int,
                 cache_dir: str) -> dict:
    """Frame cost and pixel change of one task's scene for the original meshes and each cap."""
    from vla_rl_ros.core.envs.libero_env import LiberoEnv
    from vla_rl_ros.core.envs.visual_meshes import visual_triangles
    envs, result = {}, {"task": task, "by_faces": {}}
    for cap in [0] + caps:
        start = time.perf_counter()
        env = LiberoEnv(suite, image_size=size, visual_mesh_faces=cap, visual_mesh_cache_dir=cache_dir)
        env.reset(task, 0)
        model = env.sim.env.sim.model._model
        envs[cap] = env
        entry = {"scene_build_s": round(time.perf_counter() - start, 1), "ms_per_frame": [],
                 "visual_triangles": visual_triangles(model), "mesh_triangles": int(model.nmeshface)}
        if env.mesh_decimator is not None:
            entry.update(copies_built=env.mesh_decimator.built, copies_reused=env.mesh_decimator.reused,
                         meshes_replaced=env.mesh_decimator.replaced)
        result["by_faces"][cap] = entry
    actions = arm_actions(max(STATE_STEPS), seed=task)
    diffs = {cap: [] for cap in caps}
    physics_identical, step = True, 0
    for target in STATE_STEPS:
        while step < target:
            for env in envs.values():
                make_current(env)  # a step renders the frame the policy would see
                env.step_chunk(actions[step][None])
            step += 1
        reference_qpos = envs[0].sim.env.sim.data.qpos
        physics_identical &= all(np.array_equal(env.sim.env.sim.data.qpos, reference_qpos)
                                 for env in envs.values())
        images = {}
        for cap, env in envs.items():
            timed_frames(env, 1)  # warm-up: the first frame after stepping uploads state
        for _ in range(rounds):
            for cap, env in envs.items():
                ms, images[cap] = timed_frames(env, frames)
                result["by_faces"][cap]["ms_per_frame"].append(ms)
        for cap in caps:
            diffs[cap].append(np.abs(images[cap].astype(np.int16) - images[0].astype(np.int16)))
    for env in envs.values():
        env.close()
    for cap, entry in result["by_faces"].items():
        entry["ms_per_frame"] = round(float(np.median(entry["ms_per_frame"])), 2)
        if cap:
            stack = np.stack(diffs[cap])
            entry["mean_abs_pixel_diff"] = round(float(stack.mean()), 2)
            entry["share_of_pixels_off_by_more_than_16"] = round(float((stack.max(-1) > 16).mean()), 4)
    result["physics_identical"] = bool(physics_identical)
    return result


def summarise(tasks: list[dict], caps: list[int]) -> dict:
    """Means over tasks, per face cap (0 = original meshes)."""
    summary = {}
    for cap in [0] + caps:
        entries = [t["by_faces"][cap] for t in tasks]
        row = {"ms_per_frame": round(float(np.mean([e["ms_per_frame"] for e in entries])), 2),
               "visual_triangles": int(np.mean([e["visual_triangles"] for e in entries]))}
        if cap:
            row["speed_up"] = round(summary[0]["ms_per_frame"] / row["ms_per_frame"], 2)
            row["mean_abs_pixel_diff"] = round(float(np.mean([e["mean_abs_pixel_diff"] for e in entries])), 2)
        summary[cap] = row
    return summary


def main() -> None:
    """Measure, print and write the JSON."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("LP_NUM_THREADS", "1")  # as in the env workers: one llvmpipe thread each
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="libero_object")
    parser.add_argument("--tasks", default="1,5,6")
    parser.add_argument("--faces", default="2000,4000,8000", help="face caps to compare with the originals")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=5, help="frames per timing block")
    parser.add_argument("--rounds", type=int, default=2, help="timing blocks per scene and state")
    parser.add_argument("--cache-dir", default="", help="decimated mesh cache (default: the env's)")
    parser.add_argument("--output", default=str(ROOT / "docs/results/libero_env/frame_cost_decimated.json"))
    args = parser.parse_args()
    from vla_rl_ros.core.envs.rendering import describe_renderer
    caps = [int(c) for c in args.faces.split(",")]
    load_before, start = os.getloadavg(), time.time()
    tasks = []
    for task in (int(t) for t in args.tasks.split(",")):
        tasks.append(measure_task(args.suite, task, caps, args.size, args.frames, args.rounds,
                                  args.cache_dir))
        print(json.dumps(tasks[-1]), flush=True)
    import fast_simplification
    report = {
        "what": "ms per agentview frame (median of alternating timing blocks) and mean |pixel change| "
                "of decimated visual meshes against the originals, same physics states",
        "command": " ".join(["MUJOCO_GL=egl nice -n 19 .venv/bin/python tools/experiments/frame_cost.py"]
                            + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "suite": args.suite, "image_size": args.size,
        "state_steps": list(STATE_STEPS), "frames_per_block": args.frames, "rounds": args.rounds,
        "simplifier": f"fast-simplification {fast_simplification.__version__}",
        "renderer": describe_renderer(), "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "note": "run at nice 19 beside other jobs when the load average exceeds the CPU count: "
                "absolute ms are then slower than on an idle machine; the ratios hold better",
        "wall_s": round(time.time() - start, 1),
        "summary_by_faces": summarise(tasks, caps), "tasks": tasks,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary_by_faces"]))


if __name__ == "__main__":
    main()
