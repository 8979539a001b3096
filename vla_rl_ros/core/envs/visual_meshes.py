"""Decimated copies of a scene's render-only meshes, built once and cached on disk.

On a CPU renderer (Mesa's llvmpipe) nine tenths of a LIBERO frame is transforming and rasterising
the visual meshes' triangles (docs/results/libero_env/README.md: 383 k triangles, 31 ms a frame,
3.7 ms with them hidden). :class:`VisualMeshDecimator` rewrites a model's MJCF so that each mesh
used only by visual geoms (no contacts, no mass) points at a copy with at most ``max_faces``
triangles. Collision meshes, and so everything the physics compiles from, stay as they are.

Copies are simplified with ``fast-simplification`` (quadric edge collapse) and stored as MuJoCo
``.msh`` files in the cache folder, named by the source file's hash, the face cap and
:data:`RECIPE_VERSION`; a copy that is missing or unreadable is rebuilt. Textures survive: each
kept vertex reads its texture coordinate off the original surface of its own texture chart, so
seams stay seams.
"""
from __future__ import annotations

import hashlib
import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

RECIPE_VERSION = 1
"""Part of every cache name: bump it whenever the simplification recipe changes its output."""
MIN_FACE_CAP = 16
"""Below this a cap would reduce objects to a few blobs; no renderer needs that."""
_DEFAULT_INERTIA_GROUPS = (0, 5)
"""MuJoCo's default ``compiler/inertiagrouprange``: geoms of these groups add mass."""
_digests: dict[tuple[str, int, int], str] = {}
"""Source file digests by (path, size, mtime): a task switch rebuilds the scene, not the hashes."""


def default_cache_dir() -> Path:
    """Where decimated meshes live unless the config names a folder."""
    return Path.home() / ".cache" / "vla_rl_ros" / "visual_meshes"


@dataclass
class MeshArrays:
    """One triangle mesh in its source file's frame (units before the MJCF ``scale``)."""

    vertices: np.ndarray
    """float [V, 3]."""
    faces: np.ndarray
    """int [F, 3] into ``vertices``."""
    texcoords: np.ndarray | None = None
    """float [T, 2], or None for an untextured mesh."""
    face_texcoords: np.ndarray | None = None
    """int [F, 3] into ``texcoords`` (a vertex may take different coordinates in different faces)."""


def load_mesh(path: str | Path) -> MeshArrays:
    """Read any mesh MuJoCo reads (OBJ, STL, MSH) with MuJoCo's own loader, in the file's frame.

    Reading through MuJoCo means the copy starts from exactly what the scene would render.
    MuJoCo moves a mesh into its inertial frame when compiling; that move is undone here so the
    copy lines up with the geom that places the original (MuJoCo re-centres the copy itself).
    """
    import mujoco
    model = mujoco.MjModel.from_xml_string(
        f'<mujoco><asset><mesh name="m" file="{Path(path).resolve()}"/></asset></mujoco>')
    rotation = np.zeros(9)
    mujoco.mju_quat2Mat(rotation, model.mesh_quat[0])
    vertices = model.mesh_vert.astype(np.float64) @ rotation.reshape(3, 3).T + model.mesh_pos[0]
    mesh = MeshArrays(vertices=vertices, faces=model.mesh_face.astype(np.int64))
    if model.mesh_texcoordnum[0] > 0:
        mesh.texcoords = model.mesh_texcoord.astype(np.float64)
        mesh.face_texcoords = model.mesh_facetexcoord.astype(np.int64)
    return mesh


def _proper(triangles: np.ndarray) -> np.ndarray:
    """Mask of triangles with three distinct corners."""
    a, b, c = triangles.T
    return (a != b) & (b != c) & (a != c)


def _collapse_representatives(collapses: np.ndarray, count: int) -> np.ndarray:
    """Surviving vertex of each input vertex after the recorded edge collapses (i1 into i0)."""
    representative = np.arange(count)
    representative[collapses[:, 1]] = collapses[:, 0]   # a removed vertex is removed once
    while True:  # follow chains: a vertex that absorbed others may itself be absorbed later
        jumped = representative[representative]
        if np.array_equal(jumped, representative):
            return representative
        representative = jumped


def _face_charts(corners: np.ndarray, corner_uvs: np.ndarray) -> np.ndarray:
    """Texture chart of each face: faces sharing a corner with one position and texcoord are one."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    keys = np.column_stack([corners.reshape(-1).astype(np.float64), corner_uvs.reshape(-1, 2)])
    _, wedges = np.unique(keys, axis=0, return_inverse=True)
    faces = len(corners)
    nodes = faces + int(wedges.max()) + 1
    graph = coo_matrix((np.ones(3 * faces), (np.repeat(np.arange(faces), 3), faces + wedges.reshape(-1))),
                       shape=(nodes, nodes))
    return connected_components(graph, directed=False)[1][:faces]


def decimate(mesh: MeshArrays, max_faces: int) -> MeshArrays:
    """The mesh reduced to about ``max_faces`` triangles, one texcoord per vertex (MSH layout)."""
    import fast_simplification
    # Many meshes store each triangle's corners separately (the .msh scans are triangle soups):
    # weld equal positions so the simplifier sees a connected surface.
    positions, corners = np.unique(mesh.vertices[mesh.faces].reshape(-1, 3), axis=0, return_inverse=True)
    corners = corners.reshape(-1, 3)
    proper = _proper(corners)
    corners = corners[proper]
    new_points, _, collapses = fast_simplification.simplify(
        positions, corners.astype(np.int32), target_count=min(max_faces, len(corners)), return_collapses=True)
    collapses = np.asarray(collapses, dtype=np.int64).reshape(-1, 2)
    representative = _collapse_representatives(collapses, len(positions))
    # Edge collapse only relabels the triangles that survive it, so each output triangle is an
    # input triangle whose corners moved to their representatives; the simplifier returns the
    # survivors (at their quadric-optimal positions) in input order.
    moved = representative[corners]
    alive = _proper(moved)
    survivors = np.unique(moved[alive])
    if len(survivors) != len(new_points):
        raise RuntimeError(f"simplifier returned {len(new_points)} points for {len(survivors)} survivors")
    placed = np.zeros_like(positions)
    placed[survivors] = new_points
    if mesh.texcoords is None:
        return MeshArrays(vertices=new_points, faces=np.searchsorted(survivors, moved[alive]))
    corner_uvs = mesh.texcoords[mesh.face_texcoords][proper]
    face_chart = _face_charts(corners, corner_uvs)
    charts = int(face_chart.max()) + 1
    # One output vertex per (survivor, chart). Its texcoord is read off the chart's own surface:
    # the input triangle of that chart, among those that lost a corner to the survivor, that
    # lies nearest to where the survivor now sits, interpolated there (the texture stays put
    # while the triangles under it grow).
    corner_key = (moved * charts + face_chart[:, None]).reshape(-1)
    face_of_corner = np.repeat(np.arange(len(corners)), 3)
    distance, uvs = _surface_texcoords(placed[moved.reshape(-1)], positions[corners][face_of_corner],
                                       corner_uvs[face_of_corner])
    order = np.lexsort((distance, corner_key))
    first = np.ones(len(order), dtype=bool)
    first[1:] = corner_key[order[1:]] != corner_key[order[:-1]]
    chosen = order[first]                                     # sorted by key: searchsorted works
    keys = corner_key[chosen]
    faces = np.searchsorted(keys, corner_key.reshape(-1, 3)[alive])
    return MeshArrays(vertices=placed[keys // charts], faces=faces, texcoords=uvs[chosen])


def _surface_texcoords(points: np.ndarray, triangles: np.ndarray,
                       triangle_uvs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each point [N, 3] to its triangle [N, 3, 3] and the texcoord [N, 2] there.

    The point is projected onto the triangle's plane and its barycentric weights clipped to the
    triangle (close to, and much cheaper than, the exact nearest point; good enough to pick a
    triangle and read a texcoord).
    """
    edge0, edge1 = triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]
    offset = points - triangles[:, 0]
    d00, d01, d11 = (edge0 * edge0).sum(1), (edge0 * edge1).sum(1), (edge1 * edge1).sum(1)
    d20, d21 = (offset * edge0).sum(1), (offset * edge1).sum(1)
    denominator = d00 * d11 - d01 * d01
    flat = np.abs(denominator) < 1e-30                        # a sliver: fall back to its first corner
    denominator = np.where(flat, 1.0, denominator)
    beta = np.where(flat, 0.0, (d11 * d20 - d01 * d21) / denominator)
    gamma = np.where(flat, 0.0, (d00 * d21 - d01 * d20) / denominator)
    weights = np.clip(np.stack([1.0 - beta - gamma, beta, gamma], axis=1), 0.0, None)
    weights /= weights.sum(1, keepdims=True)
    nearest = np.einsum("nk,nkd->nd", weights, triangles)
    return np.linalg.norm(points - nearest, axis=1), np.einsum("nk,nkd->nd", weights, triangle_uvs)


def write_msh(path: Path, mesh: MeshArrays) -> None:
    """Write ``mesh`` as MuJoCo's binary .msh, atomically (workers may build the same copy)."""
    vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
    texcoords = np.zeros((0, 2), np.float32) if mesh.texcoords is None else mesh.texcoords.astype(np.float32)
    # No normals: MuJoCo computes them, smoothing except across sharp edges.
    header = np.array([len(vertices), 0, len(texcoords), len(mesh.faces)], dtype=np.int32)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as out:
        for block in (header, vertices, texcoords, np.asarray(mesh.faces, dtype=np.int32)):
            out.write(np.ascontiguousarray(block).tobytes())
    os.replace(temporary, path)


def msh_is_valid(path: Path) -> bool:
    """Whether ``path`` is a complete .msh whose faces index its vertices (a cache check)."""
    try:
        data = path.read_bytes()
        vertices, normals, texcoords, faces = (int(n) for n in np.frombuffer(data[:16], np.int32))
        if vertices < 3 or faces < 1 or normals not in (0, vertices) or texcoords not in (0, vertices):
            return False
        floats = 3 * vertices + 3 * normals + 2 * texcoords
        if len(data) != 16 + 4 * (floats + 3 * faces):
            return False
        index = np.frombuffer(data, np.int32, 3 * faces, 16 + 4 * floats)
        return bool(np.isfinite(np.frombuffer(data, np.float32, floats, 16)).all()
                    and index.min() >= 0 and index.max() < vertices)
    except (OSError, ValueError):
        return False


def file_digest(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256 (memoised per path, size and mtime)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        _digests[key] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return _digests[key]


def render_only_meshes(root: ET.Element) -> set[str]:
    """Names of meshes that only geoms which neither collide nor add mass use.

    Conservative: a geom counts only with explicit ``contype="0" conaffinity="0"`` and a
    ``group`` outside ``compiler/inertiagrouprange`` (robosuite writes all three on its visual
    geoms); anything left to defaults may collide or weigh, so its mesh is never touched.
    """
    low, high = _DEFAULT_INERTIA_GROUPS
    for compiler in root.iter("compiler"):
        if compiler.get("inertiagrouprange"):
            low, high = (int(v) for v in compiler.get("inertiagrouprange").split())
    visual, other = set(), set()
    for geom in root.iter("geom"):
        mesh = geom.get("mesh")
        if mesh is None:
            continue
        group = geom.get("group")
        render_only = (geom.get("contype") == "0" and geom.get("conaffinity") == "0"
                       and group is not None and not low <= int(group) <= high)
        (visual if render_only else other).add(mesh)
    return visual - other


class VisualMeshDecimator:
    """MJCF processor (robosuite's ``set_xml_processor`` shape): render-only meshes -> cached copies.

    Counters: ``built`` copies simplified now, ``reused`` found in the cache, ``replaced`` mesh
    elements rewritten by the last call, ``failed`` sources kept as they are after an error.
    """

    def __init__(self, max_faces: int, cache_dir: str | Path | None = None) -> None:
        """Fails now, not at the first scene, if the simplifier is missing."""
        import fast_simplification  # noqa: F401  (installed by tools/setup.sh)
        if max_faces < MIN_FACE_CAP:
            raise ValueError(f"max_faces must be >= {MIN_FACE_CAP}, got {max_faces}")
        self.max_faces = max_faces
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.built = self.reused = self.replaced = 0
        self.failed: list[str] = []

    def copy_for(self, source: Path) -> Path | None:
        """Cached decimated copy of ``source``; None when it is already small or cannot be read."""
        stem = f"{source.stem}-{file_digest(source)}-{self.max_faces}f-r{RECIPE_VERSION}"
        copy, small = self.cache_dir / f"{stem}.msh", self.cache_dir / f"{stem}.small"
        if small.exists():  # remembered so small meshes are not loaded again on every build
            return None
        if msh_is_valid(copy):
            self.reused += 1
            return copy
        try:
            mesh = load_mesh(source)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            if len(mesh.faces) <= self.max_faces:
                small.touch()
                return None
            write_msh(copy, decimate(mesh, self.max_faces))
        except Exception as err:  # a mesh we cannot simplify renders as it always did
            log.warning("keeping visual mesh %s as it is: %s", source, err)
            self.failed.append(str(source))
            return None
        self.built += 1
        return copy

    def __call__(self, xml: str) -> str:
        """``xml`` with each render-only mesh's ``file`` pointing at its decimated copy."""
        root = ET.fromstring(xml)
        render_only = render_only_meshes(root)
        self.replaced = 0
        for asset in root.iter("asset"):
            for mesh in asset.iter("mesh"):
                source = mesh.get("file")
                if not source or not os.path.isabs(source) or not os.path.isfile(source):
                    continue  # robosuite writes absolute paths; anything else stays untouched
                if (mesh.get("name") or Path(source).stem) not in render_only:
                    continue
                copy = self.copy_for(Path(source))
                if copy is not None:
                    mesh.set("file", str(copy))
                    self.replaced += 1
        return ET.tostring(root, encoding="unicode")


def visual_triangles(model) -> int:
    """Triangles of the meshes drawn by render-only geoms of a compiled MjModel (each geom counted)."""
    import mujoco
    mesh_geoms = ((model.geom_type == mujoco.mjtGeom.mjGEOM_MESH) & (model.geom_contype == 0)
                  & (model.geom_conaffinity == 0))
    return int(model.mesh_facenum[model.geom_dataid[mesh_geoms]].sum())
