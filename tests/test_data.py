"""sglrp.data: determinism, annotations, splits, tensors and the VOC round trip."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter

import numpy as np
import pytest
import torch

from sglrp.data import (
    CLASSES,
    MEAN,
    STD,
    ShapesDataset,
    dataset_stats,
    export_voc,
    generate,
    load_voc,
    to_images,
    to_tensor,
)

K = len(CLASSES)


@pytest.fixture(scope="module")
def multi():
    return generate("multi", 2 * K, seed=3)


def _same(a, b) -> bool:
    if not np.array_equal(a.image, b.image) or a.label != b.label:
        return False
    if len(a.objects) != len(b.objects):
        return False
    for p, q in zip(a.objects, b.objects, strict=True):
        if (p.label, p.name, p.box) != (q.label, q.name, q.box):
            return False
        if (p.mask is None) != (q.mask is None):
            return False
        if p.mask is not None and not np.array_equal(p.mask, q.mask):
            return False
    return True


def test_class_list():
    assert K >= 10
    assert len(set(CLASSES)) == K
    for a, b in [("disc", "ring"), ("square", "square_cross"), ("triangle", "triangle_notch")]:
        assert a in CLASSES and b in CLASSES


@pytest.mark.parametrize("split", ["train", "single", "multi"])
def test_deterministic(split):
    a = generate(split, 6, seed=5)
    b = generate(split, 6, seed=5)
    assert all(_same(x, y) for x, y in zip(a, b, strict=True))
    assert all(s.image.dtype == np.uint8 and s.image.shape == (64, 64, 3) for s in a)
    c = generate(split, 6, seed=6)
    assert not any(np.array_equal(x.image, y.image) for x, y in zip(a, c, strict=True))


def test_start_offset_and_split_streams():
    full = generate("train", 8, seed=1)
    tail = generate("train", 5, seed=1, start=3)
    assert all(_same(x, y) for x, y in zip(full[3:], tail, strict=True))
    single = generate("single", 8, seed=1)
    assert not any(np.array_equal(x.image, y.image) for x, y in zip(full, single, strict=True))


def test_size_argument():
    s = generate("single", 2, seed=0, size=96)
    assert s[0].image.shape == (96, 96, 3) and s[0].objects[0].mask.shape == (96, 96)


def _check_annotations(sample):
    h, w = sample.image.shape[:2]
    union = np.zeros((h, w), dtype=int)
    for obj in sample.objects:
        assert obj.name == CLASSES[obj.label]
        assert obj.mask.dtype == bool and obj.mask.shape == (h, w)
        assert obj.mask.any()
        x0, y0, x1, y1 = obj.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        inside = np.zeros_like(obj.mask)
        inside[y0:y1, x0:x1] = True
        assert not (obj.mask & ~inside).any()  # mask inside its box
        # the box is tight: every edge row/column touches the mask
        assert obj.mask[y0].any() and obj.mask[y1 - 1].any()
        assert obj.mask[:, x0].any() and obj.mask[:, x1 - 1].any()
        union += obj.mask
    assert union.max() <= 1  # visible masks never overlap


def test_masks_inside_boxes(multi):
    for sample in generate("train", K, seed=2) + multi:
        _check_annotations(sample)


@pytest.mark.parametrize("split", ["train", "single"])
def test_single_object_splits(split):
    samples = generate(split, 3 * K, seed=4)
    for s in samples:
        assert len(s.objects) == 1
        assert s.label == s.objects[0].label
    counts = Counter(s.label for s in samples)
    assert set(counts) == set(range(K)) and set(counts.values()) == {3}


def test_multi_split(multi):
    sizes = Counter(len(s.objects) for s in multi)
    assert set(sizes) == {2, 3}
    for s in multi:
        assert s.label is None
        assert len(set(s.labels)) == len(s.labels)
    first = Counter(tuple(sorted(s.labels)) for s in multi)
    assert len(first) > 1
    assert all(len(s.objects) == 2 for s in generate("multi", 4, seed=3, num_objects=2))
    assert all(len(s.objects) == 3 for s in generate("multi", 4, seed=3, num_objects=3))


def test_multi_has_partial_occlusion(multi):
    def overlap(a, b):
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    hits = sum(
        any(overlap(p.box, q.box) for i, p in enumerate(s.objects) for q in s.objects[i + 1 :])
        for s in multi
    )
    assert hits >= 2


def test_multi_classes_roughly_balanced():
    counts = Counter(lab for s in generate("multi", 4 * K, seed=8) for lab in s.labels)
    assert set(counts) == set(range(K))
    assert max(counts.values()) <= 3 * min(counts.values())


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown split"):
        generate("val", 2)
    with pytest.raises(ValueError, match="n must be"):
        generate("train", -1)
    with pytest.raises(ValueError, match="size"):
        generate("train", 1, size=16)
    with pytest.raises(ValueError, match="num_objects"):
        generate("train", 1, num_objects=2)
    with pytest.raises(ValueError, match="num_objects"):
        generate("multi", 1, num_objects=4)


def test_tensor_round_trip():
    images = np.stack([s.image for s in generate("single", 4, seed=0)])
    x = to_tensor(images)
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
    assert np.array_equal(to_images(x), images)
    assert to_tensor(images[0]).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(images.astype(np.float32))


def test_mean_std_match_the_data():
    mean, std = dataset_stats("train", 240, seed=9)
    assert np.allclose(mean, MEAN, atol=0.03)
    assert np.allclose(std, STD, atol=0.03)


def test_torch_dataset():
    ds = ShapesDataset("train", n=5, seed=0)
    x, y = ds[2]
    ref = generate("train", 5, seed=0)[2]
    assert len(ds) == 5 and y == ref.label
    assert torch.equal(x, to_tensor(ref.image)[0])
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(ValueError, match="multi"):
        ShapesDataset("multi", n=2)


def test_voc_round_trip_exact(tmp_path, multi):
    samples = generate("single", 4, seed=1) + multi[:6]
    export_voc(samples, tmp_path)
    back = load_voc(tmp_path)
    assert len(back) == len(samples)
    assert all(_same(a, b) for a, b in zip(samples, back, strict=True))
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary files left


def test_voc_boxes_are_one_based_inclusive(tmp_path):
    sample = generate("single", 1, seed=2)[0]
    export_voc([sample], tmp_path)
    root = ET.parse(tmp_path / "Annotations" / "000000.xml").getroot()
    box = root.find("object/bndbox")
    x0, y0, x1, y1 = sample.objects[0].box
    got = [int(box.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")]
    assert got == [x0 + 1, y0 + 1, x1, y1]
    assert root.find("object/name").text == sample.objects[0].name
    assert root.find("size/width").text == "64"


def test_voc_without_masks(tmp_path):
    samples = generate("multi", 2, seed=1)
    export_voc(samples, tmp_path)
    for p in (tmp_path / "SegmentationObject").iterdir():
        p.unlink()
    back = load_voc(tmp_path)
    assert all(o.mask is None for s in back for o in s.objects)
    filled = load_voc(tmp_path, box_masks=True)
    for s, ref in zip(filled, samples, strict=True):
        for o, r in zip(s.objects, ref.objects, strict=True):
            x0, y0, x1, y1 = r.box
            assert o.box == r.box and o.mask.sum() == (x1 - x0) * (y1 - y0)


def test_voc_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Annotations"):
        load_voc(tmp_path / "missing")
    export_voc(generate("single", 1, seed=0), tmp_path)
    with pytest.raises(ValueError, match="classes="):
        load_voc(tmp_path, classes=["nothing"])
