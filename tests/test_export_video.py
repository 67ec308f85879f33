"""Turntable frames and the MP4 / GIF writers: what a person opening the files would see."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dream3d.cameras import turntable
from dream3d.export import video
from dream3d.export.video import render_turntable, turntable_frames, volume_frames, write_gif, write_video
from dream3d.representations.mesh import TexturedMesh

VIEWS, SIZE = 12, 64
RED, BLUE = (1.0, 0.1, 0.1), (0.1, 0.1, 1.0)

# each face: outward normal n and in-plane axes (a, b) with a x b = n, so corners (-,-) (+,-) (+,+) (-,+) are CCW
_FACES = [((0, 0, 1), (1, 0, 0), (0, 1, 0)), ((0, 0, -1), (-1, 0, 0), (0, 1, 0)),
          ((1, 0, 0), (0, 0, -1), (0, 1, 0)), ((-1, 0, 0), (0, 0, 1), (0, 1, 0)),
          ((0, 1, 0), (1, 0, 0), (0, 0, -1)), ((0, -1, 0), (1, 0, 0), (0, 0, 1))]


def _cube(textured: bool) -> TexturedMesh:
    """A cube of side 1 with split corners (24 verts); +Z (front) face red, the rest blue.

    ``textured``: through uv into a 2-colour texture (left half red, right half blue); else vertex colours.
    """
    verts, faces, uv, colours = [], [], [], []
    for k, (n, a, b) in enumerate(_FACES):
        n, a, b = (torch.tensor(x, dtype=torch.float32) for x in (n, a, b))
        for sa, sb in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            verts.append(0.5 * (n + sa * a + sb * b))
            u0 = 0.05 if k == 0 else 0.55  # the front face maps into the red half
            uv.append((u0 + 0.4 * (sa + 1) / 2, 0.1 + 0.8 * (1 - sb) / 2))
            colours.append(RED if k == 0 else BLUE)
        faces += [[4 * k, 4 * k + 1, 4 * k + 2], [4 * k, 4 * k + 2, 4 * k + 3]]
    verts = torch.stack(verts)
    if not textured:
        return TexturedMesh(verts, torch.tensor(faces), vertex_colors=torch.tensor(colours))
    texture = torch.empty(4, 8, 3)
    texture[:, :4] = torch.tensor(RED)
    texture[:, 4:] = torch.tensor(BLUE)
    return TexturedMesh(verts, torch.tensor(faces), uv=torch.tensor(uv), texture=texture)


def _dominant(pixel: np.ndarray) -> str:
    return "rgb"[int(np.argmax(pixel))]


@pytest.fixture(scope="module")
def frames_by_kind():
    return {kind: turntable_frames(_cube(kind == "textured"), views=VIEWS, size=SIZE)
            for kind in ("coloured", "textured")}


@pytest.mark.parametrize("kind", ["coloured", "textured"])
def test_turntable_turns_and_shows_the_colours(frames_by_kind, kind):
    frames = frames_by_kind[kind]
    assert frames.shape == (VIEWS, SIZE, SIZE, 3) and frames.dtype == np.uint8
    assert (frames[:, 0, 0] == 255).all()  # white background
    obj = (frames < 250).any(-1).mean(axis=(1, 2))
    assert (obj > 0.1).all() and (obj < 0.9).all()  # every frame shows the object, framed inside the image
    assert np.abs(frames[0].astype(int) - frames[VIEWS // 4]).mean() > 5  # it turns
    c = SIZE // 2
    assert _dominant(frames[0, c, c]) == "r"  # azimuth 0 looks at the +Z face: the red half of the texture
    assert _dominant(frames[VIEWS // 4, c, c]) == "b"  # azimuth 90: the +X face
    assert _dominant(frames[VIEWS // 2, c, c]) == "b"  # azimuth 180: the back


def test_normal_depth_and_all_modes():
    mesh = _cube(False)
    normal = turntable_frames(mesh, views=4, size=SIZE, mode="normal")
    c = SIZE // 2
    assert np.abs(normal[0, c, c].astype(int) - [128, 128, 255]).max() <= 2  # +Z normal -> (0.5, 0.5, 1)
    assert np.abs(normal[1, c, c].astype(int) - [255, 128, 128]).max() <= 2  # azimuth 90 sees +X
    assert (normal[:, 0, 0] == 255).all()
    depth = turntable_frames(mesh, views=4, size=SIZE, mode="depth")
    assert (depth[:, 0, 0] == 255).all() and (depth[:, c, c] < 250).any(-1).all()
    # the nearest point (the cube's front edge at azimuth 45) is brighter/yellower than the face centre at 0
    assert depth[0, c, c].astype(int).sum() < turntable_frames(mesh, 8, size=SIZE, mode="depth")[1, c, c].astype(int).sum()
    both = turntable_frames(mesh, views=4, size=SIZE, mode="all")
    assert both.shape == (4, SIZE, 3 * SIZE, 3)
    np.testing.assert_array_equal(both[:, :, SIZE:2 * SIZE], normal)
    np.testing.assert_array_equal(both[:, :, 2 * SIZE:], depth)


def test_chunking_does_not_change_frames(frames_by_kind):
    one_by_one = turntable_frames(_cube(True), views=VIEWS, size=SIZE, chunk=5)
    np.testing.assert_array_equal(one_by_one, frames_by_kind["textured"])


def test_render_turntable_writes_browser_mp4_and_gif(tmp_path):
    import imageio_ffmpeg

    paths = render_turntable(_cube(True), tmp_path / "export" / "turntable", views=VIEWS, fps=12, size=SIZE,
                             gif_max_size=32)
    assert set(paths) == {"mp4", "gif"} and paths["mp4"].name == "turntable.mp4"
    reader = imageio_ffmpeg.read_frames(str(paths["mp4"]))
    meta = reader.send(None)
    assert meta["codec"] == "h264" and meta["size"] == (SIZE, SIZE) and meta["pix_fmt"].startswith("yuv420p")
    decoded = np.stack([np.frombuffer(f, np.uint8).reshape(SIZE, SIZE, 3) for f in reader])
    assert decoded.shape[0] == VIEWS
    assert imageio_ffmpeg.count_frames_and_secs(str(paths["mp4"])) == (VIEWS, pytest.approx(1.0))
    assert _dominant(decoded[0, SIZE // 2, SIZE // 2]) == "r" and (decoded[0, :4, :4] > 245).all()
    data = paths["mp4"].read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart: the index comes first
    with Image.open(paths["gif"]) as gif:
        assert gif.n_frames == VIEWS and gif.size == (32, 32) and gif.info["loop"] == 0
    assert sorted(p.name for p in paths["mp4"].parent.iterdir()) == ["turntable.gif", "turntable.mp4"]


def test_write_video_pads_odd_sizes(tmp_path):
    import imageio_ffmpeg

    frames = np.zeros((3, 33, 31, 3), np.uint8)
    frames[:, :, :, 0] = 200
    path = write_video(frames, tmp_path / "odd.mp4", fps=10)
    meta = imageio_ffmpeg.read_frames(str(path)).send(None)
    assert meta["size"] == (32, 34)


def test_failed_writes_leave_no_file(tmp_path, monkeypatch):
    frames = np.full((4, 16, 16, 3), 128, np.uint8)
    target = tmp_path / "clip.mp4"
    write_video(frames, target)
    before = target.read_bytes()
    calls = {"n": 0}
    real = video._pad_even

    def fail_on_third(frame):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real(frame)

    monkeypatch.setattr(video, "_pad_even", fail_on_third)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_video(frames, target)
    assert target.read_bytes() == before  # the earlier file is untouched, no temp file is left behind
    calls["n"] = 0
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_video(frames, tmp_path / "new.mp4")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="uint8"):
        write_gif(frames.astype(np.float32), tmp_path / "clip.gif")
    with pytest.raises(ValueError, match="no frames"):
        write_video([], tmp_path / "empty.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_bad_mode_and_format_are_one_line_errors(tmp_path):
    mesh = _cube(False)
    with pytest.raises(ValueError, match="mode 'sketch'") as err:
        turntable_frames(mesh, views=2, size=16, mode="sketch")
    assert "\n" not in str(err.value) and "rgb" in str(err.value)
    with pytest.raises(ValueError, match="format") as err:
        render_turntable(mesh, tmp_path / "t", views=2, size=16, formats=("webm",))
    assert "\n" not in str(err.value) and not any(tmp_path.iterdir())


def test_volume_frames_takes_any_renderer():
    cams = turntable(5, size=8)
    seen = []

    def render_fn(c):
        seen.append(c.batch_size)
        return {"rgb": torch.full((c.batch_size, c.height, c.width, 3), 0.5)}

    frames = volume_frames(render_fn, cams, chunk=2)
    assert frames.shape == (5, 8, 8, 3) and (frames == 128).all() and seen == [2, 2, 1]
    with pytest.raises(ValueError, match="shape"):
        volume_frames(lambda c: torch.zeros(c.batch_size, 4, 4, 3), cams)
