"""GLB files pass the Khronos glTF validator (npm ``gltf-validator`` under node, via scripts/check_glb_validator.py).

Skipped unless node and the project-local validator are there: ``python scripts/check_glb_validator.py FILE``
installs it into ``.cache/npm`` once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dream3d.representations.mesh import TexturedMesh

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_glb_validator.py"
VALIDATOR = ROOT / ".cache" / "npm" / "node_modules" / "gltf-validator" / "package.json"

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
    pytest.mark.skipif(not VALIDATOR.is_file(),
                       reason="gltf-validator is not in .cache/npm (python scripts/check_glb_validator.py installs it)"),
]

# outward normal n and in-plane axes (a, b) with a x b = n: corners (-,-) (+,-) (+,+) (-,+) are CCW from outside
_FACES = [((0, 0, 1), (1, 0, 0), (0, 1, 0)), ((0, 0, -1), (-1, 0, 0), (0, 1, 0)),
          ((1, 0, 0), (0, 0, -1), (0, 1, 0)), ((-1, 0, 0), (0, 0, 1), (0, 1, 0)),
          ((0, 1, 0), (1, 0, 0), (0, 0, -1)), ((0, -1, 0), (1, 0, 0), (0, 0, 1))]


def _cube(textured: bool) -> TexturedMesh:
    """Unit cube, 24 split verts; textured: each face a cell of a 2-colour texture, else vertex colours."""
    verts, faces, uv = [], [], []
    for k, (n, a, b) in enumerate(_FACES):
        n, a, b = (torch.tensor(x, dtype=torch.float32) for x in (n, a, b))
        for sa, sb in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            verts.append(0.5 * (n + sa * a + sb * b))
            uv.append(((k % 2 + (sa + 1) / 2 * 0.9 + 0.05) / 2, (k // 2 + (1 - sb) / 2 * 0.9 + 0.05) / 3))
        faces += [[4 * k, 4 * k + 1, 4 * k + 2], [4 * k, 4 * k + 2, 4 * k + 3]]
    verts, faces = torch.stack(verts), torch.tensor(faces)
    if not textured:
        return TexturedMesh(verts, faces, vertex_colors=verts + 0.5)
    texture = torch.zeros(6, 4, 3)
    texture[..., 0] = 1.0
    texture[:, 2:] = torch.tensor([0.1, 0.2, 1.0])
    return TexturedMesh(verts, faces, uv=torch.tensor(uv), texture=texture, roughness=0.8, metallic=0.0)


def _write_glb(mesh: TexturedMesh, path: Path) -> None:
    try:
        from dream3d.export.mesh import write_glb
    except ImportError:  # TODO: remove this fallback once dream3d.export.mesh.write_glb has landed everywhere
        import trimesh
        from PIL import Image
        from trimesh.visual import TextureVisuals
        from trimesh.visual.material import PBRMaterial

        tm = trimesh.Trimesh(mesh.verts.numpy(), mesh.faces.numpy(), process=False)
        if mesh.textured:
            image = Image.fromarray((mesh.texture.numpy() * 255).round().astype("uint8"))
            uv = mesh.uv.numpy().copy()
            uv[:, 1] = 1 - uv[:, 1]
            tm.visual = TextureVisuals(uv=uv, material=PBRMaterial(baseColorTexture=image))
        else:
            tm.visual.vertex_colors = (mesh.vertex_colors.numpy() * 255).round().astype("uint8")
        path.write_bytes(tm.export(file_type="glb"))
        return
    write_glb(mesh, path)


def _validate(*paths: Path) -> tuple[int, list[dict]]:
    done = subprocess.run([sys.executable, str(SCRIPT), "--no-install", "--json", *map(str, paths)],
                          capture_output=True, text=True, timeout=120)
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_written_glbs_have_no_validation_errors(tmp_path):
    textured, coloured = tmp_path / "textured.glb", tmp_path / "coloured.glb"
    _write_glb(_cube(True), textured)
    _write_glb(_cube(False), coloured)
    rc, reports = _validate(textured, coloured)
    assert len(reports) == 2
    for report in reports:
        assert report["errors"] == 0, report["messages"]
        assert report["warnings"] == 0, report["messages"]
    assert rc == 0


def test_a_broken_glb_fails_the_check(tmp_path):
    good, bad = tmp_path / "good.glb", tmp_path / "bad.glb"
    _write_glb(_cube(True), good)
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # truncated download
    rc, reports = _validate(bad)
    assert rc == 1 and reports[0]["errors"] > 0
