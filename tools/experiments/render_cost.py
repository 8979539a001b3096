"""Experiment (not a test): what one rendered LIBERO frame costs, by MuJoCo render setting.

Rendering bounds every LIBERO rollout on a CPU (docs/results/libero_env/README.md), so this
measures which of MuJoCo's visual settings pay for themselves on Mesa's llvmpipe: multisampling
(``vis.quality.offsamples``), shadows and reflections, and how much of a frame the visual meshes'
triangles take (the last setting hides geom group 1, where robosuite puts the visual geoms: a
lower bound for what decimated meshes could save, not an image anyone would train on). It renders
the default set's first scene from the agentview camera with MuJoCo's own ``mujoco.Renderer`` (one
fresh GL context per setting) and prints the scene's triangle count, milliseconds per frame and
how far each setting's pixels move from the default's::

    MUJOCO_GL=egl .venv/bin/python tools/experiments/render_cost.py [--task 1] [--size 128] [--frames 40]

Nothing here changes what the environments render; it informs that choice.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for vla_rl_ros

VISUAL_GEOM_GROUP = 1
"""robosuite's geom group of visual-only geoms (collision geoms are group 0)."""
SETTINGS = [  # (label, offsamples or None for the scene's own, render flags switched off, hidden geom groups)
    ("scene default", None, (), ()),
    ("no multisampling", 0, (), ()),
    ("no multisampling, no shadows", 0, ("mjRND_SHADOW",), ()),
    ("no multisampling, no shadows or reflections", 0, ("mjRND_SHADOW", "mjRND_REFLECTION"), ()),
    ("no multisampling, visual meshes hidden", 0, (), (VISUAL_GEOM_GROUP,)),
]


def frame_cost(model, data, size: int, frames: int, offsamples, flags_off,
               hidden_groups=()) -> tuple[float, np.ndarray]:
    """Milliseconds per rendered frame (after one warm-up frame) and the last frame."""
    import mujoco
    if offsamples is not None:
        model.vis.quality.offsamples = offsamples
    renderer = mujoco.Renderer(model, size, size)
    for flag in flags_off:
        renderer.scene.flags[getattr(mujoco.mjtRndFlag, flag)] = 0
    option = mujoco.MjvOption()
    for group in hidden_groups:
        option.geomgroup[group] = 0

    def render() -> np.ndarray:
        renderer.update_scene(data, camera="agentview", scene_option=option)
        return renderer.render()

    render()
    start = time.perf_counter()
    for _ in range(frames):
        image = render()
    elapsed = (time.perf_counter() - start) / frames
    image = image.copy()
    renderer.close()
    return 1000 * elapsed, image


def main() -> None:
    """Print one JSON line per setting."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from vla_rl_ros.core.envs.libero_env import LiberoEnv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="libero_object")
    parser.add_argument("--task", type=int, default=1)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=40)
    args = parser.parse_args()
    env = LiberoEnv(args.suite, image_size=args.size, render=False)  # physics only: we render here
    env.reset(args.task, 0)
    model, data = env.sim.env.sim.model._model, env.sim.env.sim.data._data
    scene_offsamples = int(model.vis.quality.offsamples)
    reference = None
    print(json.dumps({"mesh_triangles": int(model.nmeshface), "meshes": int(model.nmesh),
                      "visual_geoms": int((model.geom_group == VISUAL_GEOM_GROUP).sum())}), flush=True)
    for label, offsamples, flags_off, hidden in SETTINGS:
        ms, image = frame_cost(model, data, args.size, args.frames, offsamples, flags_off, hidden)
        reference = image if reference is None else reference
        change = float(np.abs(image.astype(int) - reference).mean())
        print(json.dumps({"setting": label, "ms_per_frame": round(ms, 1),
                          "offsamples": scene_offsamples if offsamples is None else offsamples,
                          "mean_abs_pixel_change": round(change, 2)}), flush=True)
    print(json.dumps({"renderer": os.environ["MUJOCO_GL"], "size": args.size, "frames": args.frames}))
    os._exit(0)  # skip GL context teardown at exit: EGL on llvmpipe raises in destructors there


if __name__ == "__main__":
    main()
