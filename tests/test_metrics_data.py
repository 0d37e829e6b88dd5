"""Reference data sources: image folder + captions (CSV / COCO JSON) and their error messages."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from metrics import FolderSource, build_source, resize_images


def make_folder(tmp_path, n=5, size=48):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(d / f"im{i}.png")
    return d


def test_folder_with_csv_and_coco_captions(tmp_path):
    d = make_folder(tmp_path)
    csv = tmp_path / "caps.csv"
    csv.write_text("file_name,caption\n" + "".join(f"im{i}.png,a red circle {i}\n" for i in range(5)))
    src = FolderSource(d, csv)
    x, caps = src.load(1, 3)
    assert x.shape == (2, 3, 48, 56) and caps == ["a red circle 1", "a red circle 2"]
    coco = {"images": [{"id": i, "file_name": f"im{i}.png"} for i in range(5)],
            "annotations": [{"image_id": i, "caption": f"cap {i}"} for i in range(5)]
            + [{"image_id": 0, "caption": "second caption"}]}
    (tmp_path / "caps.json").write_text(json.dumps(coco))
    src = build_source({"dataset": "folder", "root": str(d), "captions": str(tmp_path / "caps.json")})
    assert src.load(0, 1)[1] == ["cap 0"] and len(src) == 5
    assert resize_images(x, 32).shape == (2, 3, 32, 32)  # centre crop to square, then resize


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FolderSource(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="contains no images"):
        FolderSource(tmp_path / "empty")
    d = make_folder(tmp_path, n=3)
    (d / "broken.png").write_bytes(b"not an image")
    src = FolderSource(d)
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        src.load(0, 4)
    csv = tmp_path / "c.csv"
    csv.write_text("file_name,caption\nim0.png,x\n")
    with pytest.raises(ValueError, match="have no caption"):
        FolderSource(d, csv)
    with pytest.raises(ValueError, match="resize='none'"):
        resize_images(torch.rand(1, 3, 48, 48), 32, "none")


def test_reference_n_larger_than_folder(tmp_path):
    from metrics import reference_stats

    class Dummy:
        name, dim, weights_sha256, resize = "dummy", 3, "0", "none"

        def __call__(self, x):
            return x.mean((2, 3))

    src = FolderSource(make_folder(tmp_path, n=4))
    with pytest.raises(ValueError, match="has only 4"):
        reference_stats(src, Dummy(), 10, cache_dir=tmp_path / "c")
    st, info = reference_stats(src, Dummy(), 4, resolution=32, cache_dir=tmp_path / "c")
    assert st.n == 4 and not info["from_cache"]
    assert reference_stats(src, Dummy(), 4, resolution=32, cache_dir=tmp_path / "c")[1]["from_cache"]
