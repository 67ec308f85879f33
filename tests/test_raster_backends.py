"""nvdiffrast and the torch rasterizer agree where both run (a CUDA machine with nvdiffrast; skipped elsewhere),
and asking for nvdiffrast where it cannot run is a clear error."""

from __future__ import annotations

import pytest
import torch

from dream3d.cameras import turntable
from dream3d.render.raster import (
    antialias,
    interpolate,
    mvp_from_cameras,
    nvdiffrast,
    rasterize,
    transform,
    use_nvdiffrast,
)


def test_backend_choice_on_cpu():
    assert use_nvdiffrast("auto", torch.device("cpu")) is False
    assert use_nvdiffrast("torch", torch.device("cpu")) is False
    with pytest.raises(ValueError, match="needs CUDA"):
        use_nvdiffrast("nvdiffrast", torch.device("cpu"))
    with pytest.raises(ValueError, match="expected one of"):
        use_nvdiffrast("opengl", torch.device("cpu"))


@pytest.mark.skipif(not nvdiffrast.available(), reason="nvdiffrast or CUDA not available")
def test_nvdiffrast_matches_torch():
    import trimesh

    box = trimesh.creation.icosphere(subdivisions=3, radius=0.6)
    verts = torch.tensor(box.vertices, dtype=torch.float32, device="cuda", requires_grad=True)
    faces = torch.tensor(box.faces, device="cuda")
    cams = turntable(4, elevation=20.0, distance=2.0, fovy=50.0, size=64).to("cuda")
    clip = transform(verts, mvp_from_cameras(cams).to(verts))
    out = {}
    for backend in ("torch", "nvdiffrast"):
        rast = rasterize(clip, faces, 64, 64, backend=backend)
        colour = interpolate(verts * 0.5 + 0.5, rast, faces)
        image = antialias(torch.cat([colour, rast.mask[..., None].float()], -1), rast, clip, faces)
        grad, = torch.autograd.grad(image.sum(), verts)
        out[backend] = (rast.mask, colour, image, rast.depth, grad)
    (m0, c0, i0, d0, g0), (m1, c1, i1, d1, g1) = out["torch"], out["nvdiffrast"]
    assert (m0 == m1).float().mean() > 0.995  # coverage rules differ only on exact edge hits
    both = m0 & m1
    assert torch.allclose(c0[both], c1[both], atol=1e-3)
    assert torch.allclose(d0[both], d1[both], atol=1e-3)
    assert (i0 - i1).abs().mean() < 0.01
    assert torch.nn.functional.cosine_similarity(g0.flatten(), g1.flatten(), dim=0) > 0.9
