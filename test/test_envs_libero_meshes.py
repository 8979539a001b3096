"""Decimated visual meshes (env.visual_mesh_faces): cheaper frames, the same physics, a disk cache."""
import numpy as np
import pytest

from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.core.envs.config import EnvConfig
from vla_rl_ros.core.envs.visual_meshes import (MeshArrays, VisualMeshDecimator, decimate, load_mesh,
                                                msh_is_valid, render_only_meshes, write_msh)

pytest.importorskip("fast_simplification")


def textured_sphere_soup(path, rings=30, segments=60):
    """A UV sphere written like the LIBERO scans: every triangle with its own three corners."""
    theta, phi = np.meshgrid(np.linspace(0, np.pi, rings + 1), np.linspace(0, 2 * np.pi, segments + 1),
                             indexing="ij")
    grid = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1)
    grid = grid.reshape(-1, 3)
    uv = np.stack([phi / (2 * np.pi), theta / np.pi], -1).reshape(-1, 2)
    index = np.arange(len(grid)).reshape(rings + 1, segments + 1)
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
    faces = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    corners = faces.reshape(-1)
    soup = MeshArrays(vertices=0.05 * grid[corners], faces=np.arange(len(corners)).reshape(-1, 3),
                      texcoords=uv[corners])
    write_msh(path, soup)
    return path


def test_a_textured_soup_is_welded_and_decimated_with_texcoords(tmp_path):
    source = textured_sphere_soup(tmp_path / "sphere.msh")
    mesh = load_mesh(source)
    small = decimate(mesh, 300)
    assert 250 <= len(small.faces) <= 300 < len(mesh.faces)
    assert small.texcoords.shape == (len(small.vertices), 2)
    assert small.texcoords.min() >= -1e-6 and small.texcoords.max() <= 1 + 1e-6
    # The copy keeps the shape: vertices stay on (near) the sphere, none at the origin.
    radii = np.linalg.norm(small.vertices, axis=1)
    assert np.all(np.abs(radii - 0.05) < 0.005), (radii.min(), radii.max())
    write_msh(tmp_path / "small.msh", small)
    assert msh_is_valid(tmp_path / "small.msh")


def test_only_meshes_that_neither_collide_nor_weigh_are_render_only():
    import xml.etree.ElementTree as ET
    root = ET.fromstring("""<mujoco><compiler inertiagrouprange="0 0"/><worldbody><body>
      <geom mesh="vis" contype="0" conaffinity="0" group="1"/>
      <geom mesh="shared" contype="0" conaffinity="0" group="1"/><geom mesh="shared" group="0"/>
      <geom mesh="defaults" group="1"/>
      <geom mesh="weighs" contype="0" conaffinity="0" group="0"/>
    </body></worldbody></mujoco>""")
    assert render_only_meshes(root) == {"vis"}
    root.find("compiler").set("inertiagrouprange", "0 5")  # MuJoCo's default: group 1 adds mass
    assert render_only_meshes(root) == set()


def test_copies_are_cached_reused_and_rebuilt_when_corrupt_or_missing(tmp_path):
    source = textured_sphere_soup(tmp_path / "sphere.msh")
    xml = (f'<mujoco><compiler inertiagrouprange="0 0"/><asset><mesh name="ball" file="{source}"/></asset>'
           '<worldbody><body><geom type="mesh" mesh="ball" contype="0" conaffinity="0" group="1"/>'
           '</body></worldbody></mujoco>')
    first = VisualMeshDecimator(300, tmp_path / "cache")
    rewritten = first(xml)
    assert (first.built, first.reused, first.replaced) == (1, 0, 1)
    [copy] = (tmp_path / "cache").glob("*.msh")
    assert str(copy) in rewritten and str(source) not in rewritten
    stamp = copy.stat().st_mtime_ns
    second = VisualMeshDecimator(300, tmp_path / "cache")
    assert second(xml) == rewritten and (second.built, second.reused) == (0, 1)
    assert copy.stat().st_mtime_ns == stamp                     # not simplified again
    copy.write_bytes(copy.read_bytes()[:-40])                   # truncated: an interrupted write
    third = VisualMeshDecimator(300, tmp_path / "cache")
    assert third(xml) == rewritten and (third.built, third.reused) == (1, 0) and msh_is_valid(copy)
    copy.unlink()
    fourth = VisualMeshDecimator(300, tmp_path / "cache")
    assert fourth(xml) == rewritten and fourth.built == 1 and not fourth.failed
    # A cap above the mesh's size keeps the original file (remembered, not reloaded).
    assert str(source) in VisualMeshDecimator(100000, tmp_path / "cache")(xml)
    import mujoco
    assert mujoco.MjModel.from_xml_string(rewritten).mesh_facenum[0] <= 300


def test_the_option_is_validated():
    assert EnvConfig().visual_mesh_faces == 0  # original meshes: what the shipped policy saw
    EnvConfig(visual_mesh_faces=2000)
    with pytest.raises(ConfigError, match="env.visual_mesh_faces"):
        EnvConfig(visual_mesh_faces=8)


def run_scene(faces, cache_dir, actions):
    """Build task 1 of LIBERO-Object, run ``actions`` as one chunk; what the test compares."""
    import mujoco
    from vla_rl_ros.core.envs.libero_env import LiberoEnv
    from vla_rl_ros.core.envs.visual_meshes import visual_triangles
    env = LiberoEnv("libero_object", image_size=128, visual_mesh_faces=faces,
                    visual_mesh_cache_dir=str(cache_dir))
    try:
        env.reset(1, 0)
        result = env.step_chunk(actions)
        sim = env.sim.env.sim
        model = sim.model._model
        collides = (model.geom_contype != 0) | (model.geom_conaffinity != 0)
        meshes = sorted(set(model.geom_dataid[collides & (model.geom_type == mujoco.mjtGeom.mjGEOM_MESH)]))
        first, count = model.mesh_vertadr, model.mesh_vertnum
        return {"image": result.observation.image, "qpos": sim.data.qpos.copy(), "qvel": sim.data.qvel.copy(),
                "visual_triangles": visual_triangles(model), "xml": env.sim.env.model.get_xml(),
                "decimator": env.mesh_decimator,
                "collision_geoms": [getattr(model, name)[collides].copy() for name in
                                    ("geom_type", "geom_size", "geom_pos", "geom_quat", "geom_dataid",
                                     "geom_friction")],
                "collision_meshes": [model.mesh_vert[first[m]:first[m] + count[m]].copy() for m in meshes],
                "bodies": [getattr(model, name).copy() for name in
                           ("body_mass", "body_inertia", "body_ipos", "body_iquat")]}
    finally:
        env.close()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    actions = np.random.default_rng(0).uniform(-1, 1, size=(12, 7))
    cache = tmp_path_factory.mktemp("mesh_cache")
    return run_scene(0, cache, actions), run_scene(2000, cache, actions), cache


@pytest.mark.slow
def test_decimated_scene_has_fewer_triangles_and_identical_physics(scenes):
    original, decimated, _ = scenes
    assert decimated["decimator"].replaced >= 10 and not decimated["decimator"].failed
    assert decimated["visual_triangles"] < original["visual_triangles"] / 3
    physics = ("collision_geoms", "collision_meshes", "bodies")
    for key in physics:
        assert len(original[key]) == len(decimated[key]) > 0
        for before, after in zip(original[key], decimated[key]):
            np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(original["qpos"], decimated["qpos"])   # bit for bit, after 12 steps
    np.testing.assert_array_equal(original["qvel"], decimated["qvel"])


@pytest.mark.slow
def test_decimated_frames_differ_only_slightly(scenes):
    original, decimated, _ = scenes
    difference = np.abs(original["image"].astype(int) - decimated["image"].astype(int))
    assert 0 < difference.mean() < 5.0, difference.mean()   # measured: about 2 grey levels


@pytest.mark.slow
def test_a_second_build_reuses_every_copy(scenes):
    _, decimated, cache = scenes
    again = VisualMeshDecimator(2000, cache)
    again(decimated["xml"])
    assert again.built == 0 and again.reused == again.replaced == decimated["decimator"].replaced
