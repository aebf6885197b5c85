"""Hardened loading: VOC annotations, confined paths, the pixel limit and weight checksums.

Every bad input must fail with an error naming the file (and the object) and the problem.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import warnings
import xml.etree.ElementTree as ET
import zlib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from sglrp import images
from sglrp.data import (
    ClippedBoxWarning,
    VOCDataset,
    export_voc,
    generate,
    load_voc,
)
from sglrp.images import ImageTooLargeError
from sglrp.models import get_model, pretrained
from sglrp.models.checksum import verify_sha256
from sglrp.models.zoo import load_state_dict_file

WEIGHTS = resources.files("sglrp").joinpath("weights")
ID = "000000"


@pytest.fixture
def voc(tmp_path) -> Path:
    """A two-image VOC folder (64 x 64 images, one object each, with masks)."""
    folder = tmp_path / "voc"
    export_voc(generate("single", 2, seed=5), folder)
    return folder


def _xml(folder: Path, sample_id: str = ID) -> Path:
    return folder / "Annotations" / f"{sample_id}.xml"


def _set(folder: Path, changes: dict[str, str | None], sample_id: str = ID) -> Path:
    """Set (or, with ``None``, remove) elements of an annotation, given by path from the root."""
    path = _xml(folder, sample_id)
    tree = ET.parse(path)
    root = tree.getroot()
    for where, value in changes.items():
        node = root.find(where)
        if value is None:
            parent_path, _, _ = where.rpartition("/")
            parent = root if not parent_path else root.find(parent_path)
            parent.remove(node)
        else:
            node.text = value
    tree.write(path)
    return path


def _box(folder: Path, xmin, ymin, xmax, ymax) -> Path:
    tags = ("xmin", "ymin", "xmax", "ymax")
    values = (xmin, ymin, xmax, ymax)
    return _set(folder, {f"object/bndbox/{t}": str(v) for t, v in zip(tags, values, strict=True)})


def _no_decoding(monkeypatch) -> None:
    """Make any pixel decoding raise, so a test fails if something is decoded."""

    def boom(self):
        raise AssertionError(f"pixels of {getattr(self, 'filename', self)} were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", boom)
    monkeypatch.setattr(Image.Image, "load", boom)


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG claiming ``width x height`` 8-bit RGB pixels: valid header, a few bytes of data."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data)
    return path


# ------------------------------------------------------------------ annotations


def test_round_trip_does_not_warn(voc):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samples = load_voc(voc)
    assert len(samples) == 2


def test_malformed_xml_is_named(voc):
    path = _xml(voc)
    path.write_text("<annotation>\n  <filename>000000.png</filename>\n  <object", "utf-8")
    with pytest.raises(ValueError) as info:
        load_voc(voc)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid XML (unclosed token: line 3, column ")
    assert message.endswith(")")


def test_wrong_root_element(voc):
    _xml(voc).write_text("<html><filename>000000.png</filename></html>", "utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{_xml(voc)}: the root element is <html>")):
        load_voc(voc)


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("filename", "<filename>"),
        ("object/name", "object 1: missing or empty <name>"),
        ("object/bndbox", "object 1 (disc): missing <bndbox>"),
        ("object/bndbox/xmax", "object 1 (disc): missing or empty <xmax>"),
    ],
)
def test_missing_fields(voc, remove, named):
    _set(voc, {"object/name": "disc"})
    path = _set(voc, {remove: None})
    with pytest.raises(ValueError, match=re.escape(f"{path}: ") + ".*" + re.escape(named)):
        load_voc(voc)


def test_empty_field_is_missing(voc):
    path = _set(voc, {"object/name": "disc", "object/bndbox/ymin": "  "})
    with pytest.raises(ValueError, match=re.escape(f"{path}: object 1 (disc): missing or empty")):
        load_voc(voc)


@pytest.mark.parametrize("text", ["NaN", "nan", "inf", "-Infinity", "abc", "1,5", "0x10"])
def test_non_numeric_or_non_finite_coordinates(voc, text):
    path = _set(voc, {"object/name": "disc", "object/bndbox/xmin": text})
    with pytest.raises(ValueError) as info:
        load_voc(voc)
    message = str(info.value)
    assert message.startswith(f"{path}: object 1 (disc): <xmin> is {text!r}, not a")
    assert "cannot convert" not in message and "could not convert" not in message


def test_fractional_coordinates_are_rounded(voc):
    _box(voc, 10.6, "3.2", 40.4, 50)  # VOC 1-based inclusive: x 11..40 -> [10, 40)
    assert load_voc(voc)[0].objects[0].box == (10, 2, 40, 50)


def test_inverted_box(voc):
    path = _set(voc, {"object/name": "disc"})
    _box(voc, 40, 5, 10, 20)
    with pytest.raises(ValueError, match=re.escape(f"{path}: object 1 (disc): inverted box")):
        load_voc(voc)
    _box(voc, 5, 40, 20, 10)
    with pytest.raises(ValueError, match="inverted box: ymax 10 < ymin 40"):
        load_voc(voc)


def test_empty_box(voc):
    path = _set(voc, {"object/name": "disc"})
    _box(voc, 20, 5, 19, 30)  # covers x = 20 ... 19: no pixel
    with pytest.raises(ValueError, match=re.escape(f"{path}: object 1 (disc): empty box")):
        load_voc(voc)
    _box(voc, 20, 20, 20, 20)  # one pixel: valid
    assert load_voc(voc)[0].objects[0].box == (19, 19, 20, 20)


@pytest.mark.parametrize(
    ("box", "clipped"),
    [
        ((-5, 3, 20, 30), (0, 2, 20, 30)),  # negative
        ((0, 3, 20, 30), (0, 2, 20, 30)),  # 0 is one pixel left of a 1-based image
        ((10, 3, 100, 64), (9, 2, 64, 64)),  # past the right edge
        ((10, -40, 20, 99), (9, 0, 20, 64)),  # both vertical ends
    ],
)
def test_boxes_outside_the_image_are_clipped_with_a_warning(voc, box, clipped):
    path = _set(voc, {"object/name": "disc"})
    _box(voc, *box)
    with pytest.warns(ClippedBoxWarning) as record:
        samples = load_voc(voc, box_masks=True)
    assert len(record) == 1
    message = str(record[0].message)
    assert f"{path}: object 1 (disc) box {tuple(box)}" in message.replace("'", "")
    assert "64x64" in message
    assert samples[0].objects[0].box == clipped
    # masks come from the segmentation PNG; the box itself lies in the image
    x0, y0, x1, y1 = clipped
    assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64


def test_clipped_box_mask_without_segmentation(voc):
    shutil.rmtree(voc / "SegmentationObject")
    _box(voc, -5, 3, 100, 30)
    with pytest.warns(ClippedBoxWarning):
        sample = load_voc(voc, box_masks=True)[0]
    mask = sample.objects[0].mask
    assert sample.objects[0].box == (0, 2, 64, 30)
    assert mask.shape == (64, 64) and mask.sum() == 64 * 28 and mask[2:30].all()


def test_one_warning_lists_every_clipped_file(voc):
    _box(voc, -1, 3, 20, 30)
    _set(voc, {"object/bndbox/xmax": "70"}, sample_id="000001")
    with pytest.warns(ClippedBoxWarning) as record:
        VOCDataset(voc)
    assert len(record) == 1
    assert str(_xml(voc)) in str(record[0].message)
    assert str(_xml(voc, "000001")) in str(record[0].message)


@pytest.mark.parametrize("box", [(70, 3, 90, 30), (-30, 3, -10, 30), (5, 65, 10, 80)])
def test_box_wholly_outside_the_image_is_refused(voc, box):
    path = _set(voc, {"object/name": "disc"})
    _box(voc, *box)
    with pytest.raises(ValueError, match=re.escape(f"{path}: object 1 (disc): box ")) as info:
        load_voc(voc)
    assert "entirely outside the 64x64 image" in str(info.value)


def test_unknown_class_names_the_file_and_object(voc):
    path = _set(voc, {"object/name": "unicorn"})
    with pytest.raises(ValueError, match=re.escape(f"{path}: object 1 (unicorn): class 'unicorn'")):
        load_voc(voc)


def test_size_must_match_the_image(voc):
    path = _set(voc, {"size/width": "500", "size/height": "375"})
    with pytest.raises(ValueError, match=re.escape(f"{path}: <size> says 500x375 but 000000.png")):
        load_voc(voc)
    _set(voc, {"size/width": "0", "size/height": "0"})  # unknown: accepted
    assert load_voc(voc)[0].image.shape == (64, 64, 3)
    _set(voc, {"size/width": "64.5", "size/height": "64"})
    with pytest.raises(ValueError, match=re.escape(f"{path}: <size><width> is '64.5'")):
        load_voc(voc)
    _set(voc, {"size/width": "-64", "size/height": "64"})
    with pytest.raises(ValueError, match="sizes must be positive"):
        load_voc(voc)


def test_missing_image_names_the_annotation(voc):
    (voc / "JPEGImages" / "000000.png").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"(named in {_xml(voc)})")):
        load_voc(voc)


# ------------------------------------------------------------------ paths confined to the folder


@pytest.mark.parametrize("name", ["../../../img.png", "../JPEGImages/000000.png", "a/../../b.png"])
def test_parent_paths_are_refused(voc, name):
    (voc.parent / "img.png").write_bytes((voc / "JPEGImages" / "000000.png").read_bytes())
    path = _set(voc, {"filename": name})
    with pytest.raises(ValueError, match=re.escape(f"{path}: <filename> {name!r} leaves")):
        load_voc(voc)


def test_absolute_paths_are_refused(voc):
    target = (voc / "JPEGImages" / "000001.png").resolve()  # exists, even inside the folder
    path = _set(voc, {"filename": str(target)})
    with pytest.raises(ValueError, match=re.escape(f"{path}: <filename> ") + ".*absolute path"):
        load_voc(voc)
    _set(voc, {"filename": "C:\\data\\img.png"})
    with pytest.raises(ValueError, match="absolute path"):
        load_voc(voc)


def test_symlinks_leaving_the_folder_are_refused(voc):
    outside = voc.parent / "secret.png"
    shutil.copyfile(voc / "JPEGImages" / "000000.png", outside)
    (voc / "JPEGImages" / "link.png").symlink_to(outside)
    path = _set(voc, {"filename": "link.png"})
    with pytest.raises(ValueError, match=re.escape(f"{path}: ") + ".*link.png is a link to"):
        load_voc(voc)


def test_symlinks_inside_the_folder_are_fine(voc, tmp_path):
    (voc / "JPEGImages" / "same.png").symlink_to(voc / "JPEGImages" / "000001.png")
    _set(voc, {"filename": "same.png"})
    assert np.array_equal(load_voc(voc)[0].image, load_voc(voc)[1].image)
    # a symlinked JPEGImages folder (images kept elsewhere) is the user's choice: allowed
    elsewhere = tmp_path / "pool"
    shutil.move(voc / "JPEGImages", elsewhere)
    (voc / "JPEGImages").symlink_to(elsewhere, target_is_directory=True)
    assert len(load_voc(voc)) == 2


def test_annotation_and_mask_symlinks_leaving_the_folder_are_refused(voc, tmp_path):
    seg = voc / "SegmentationObject" / "000001.png"
    shutil.move(seg, tmp_path / "mask.png")
    seg.symlink_to(tmp_path / "mask.png")
    with pytest.raises(ValueError, match=re.escape(f"{_xml(voc, '000001')}: {seg} is a link")):
        load_voc(voc)
    seg.unlink()
    xml = _xml(voc, "000001")
    shutil.move(xml, tmp_path / "ann.xml")
    xml.symlink_to(tmp_path / "ann.xml")
    with pytest.raises(ValueError, match=re.escape(f"{xml}: {xml} is a link")):
        load_voc(voc)


def test_filename_without_extension_finds_the_image(voc):
    _set(voc, {"filename": "000001"})  # as in ImageNet's validation XML
    samples = load_voc(voc)
    assert np.array_equal(samples[0].image, samples[1].image)


# ------------------------------------------------------------------ pixel limit, lazy decoding


def test_huge_png_is_refused_before_decoding(tmp_path, monkeypatch):
    huge = _png_header(tmp_path / "huge.png", 12000, 12000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(huge) as im:  # the header is valid and claims 12000 x 12000
            assert im.size == (12000, 12000)
    _no_decoding(monkeypatch)
    with pytest.raises(ImageTooLargeError) as info:
        images.load_image(huge)
    message = str(info.value)
    assert message.startswith(f"{huge}: image is 12000x12000 = 144.0 megapixels")
    assert "limit of 50 megapixels" in message and "MAX_PIXELS" in message
    with pytest.raises(ImageTooLargeError):
        images.image_size(huge)


def test_huge_png_in_a_voc_folder_is_refused_before_decoding(voc, monkeypatch):
    _png_header(voc / "JPEGImages" / "000001.png", 12000, 12000)
    _no_decoding(monkeypatch)
    with pytest.raises(ImageTooLargeError) as info:
        VOCDataset(voc)
    message = str(info.value)
    assert "000001.png: image is 12000x12000" in message
    assert f"(named in {_xml(voc, '000001')})" in message


def test_pixel_limit_can_be_changed(voc, monkeypatch):
    image = voc / "JPEGImages" / "000000.png"
    assert images.load_image(image).size == (64, 64)
    with pytest.raises(ImageTooLargeError, match="limit of 0.004 megapixels"):
        images.load_image(image, max_pixels=4000)
    assert images.load_image(image, max_pixels=4096).size == (64, 64)
    with pytest.raises(ImageTooLargeError):
        load_voc(voc, max_pixels=4000)
    monkeypatch.setattr(images, "MAX_PIXELS", 4000)
    with pytest.raises(ImageTooLargeError):
        images.load_image(image)
    with pytest.raises(ImageTooLargeError):
        load_voc(voc)
    with pytest.raises(ValueError, match="max_pixels must be a positive int"):
        images.load_image(image, max_pixels=0)


def test_voc_dataset_decodes_on_access(voc, monkeypatch):
    eager = load_voc(voc)
    with monkeypatch.context() as patch:
        _no_decoding(patch)
        ds = VOCDataset(voc)  # reads annotations and image headers only
        assert len(ds) == 2 and ds.ids == ["000000", "000001"]
    for i, ref in enumerate(eager):
        got = ds[i]
        assert np.array_equal(got.image, ref.image) and got.label == ref.label
        assert [o.box for o in got.objects] == [o.box for o in ref.objects]
        assert all(
            np.array_equal(a.mask, b.mask) for a, b in zip(got.objects, ref.objects, strict=True)
        )
    assert np.array_equal(ds[-1].image, eager[-1].image)
    assert [s.label for s in ds[0:2]] == [s.label for s in eager]
    assert [s.label for s in ds] == [s.label for s in eager]
    with pytest.raises(IndexError):
        ds[2]


def test_image_changed_after_opening(voc):
    ds = VOCDataset(voc)
    Image.new("RGB", (32, 64)).save(voc / "JPEGImages" / "000001.png")
    ds[0]
    with pytest.raises(ValueError, match=r"000001.png is 32x64 but was 64x64 when .* changed"):
        ds[1]


def test_segmentation_png_must_be_an_index_image_of_the_right_size(voc):
    seg = voc / "SegmentationObject" / "000000.png"
    Image.open(seg).convert("RGB").save(seg)
    with pytest.raises(ValueError, match=re.escape(f"{seg}: a SegmentationObject PNG")):
        load_voc(voc)
    Image.new("P", (32, 32)).save(seg)
    with pytest.raises(ValueError, match=re.escape(f"{seg} is 32x32 but its image is 64x64")):
        load_voc(voc)


# ------------------------------------------------------------------ image modes


def _modes(rgb: np.ndarray) -> dict[str, tuple[Image.Image, np.ndarray]]:
    """Images of several modes and the 8-bit RGB array each must load as."""
    gray = rgb[..., 0]
    alpha = np.where(np.arange(64)[None, :] < 32, 255, 0).astype(np.uint8) * np.ones((64, 1))
    alpha = alpha.astype(np.uint8)
    over_white = np.where(alpha[..., None] == 255, rgb, 255).astype(np.uint8)
    g16 = gray.astype(np.uint16) * 257  # 8-bit v -> 16-bit v * 257 -> back to v
    palette = Image.fromarray(rgb).quantize(16)
    return {
        "L": (Image.fromarray(gray, "L"), np.repeat(gray[..., None], 3, axis=-1)),
        "RGBA": (Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), over_white),
        "I;16": (Image.fromarray(g16), np.repeat(gray[..., None], 3, axis=-1)),
        "P": (palette, np.asarray(palette.convert("RGB"))),
    }


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_voc_image_modes(voc, mode):
    rgb = load_voc(voc)[0].image
    image, expected = _modes(rgb)[mode]
    image.save(voc / "JPEGImages" / "000000.png")
    with Image.open(voc / "JPEGImages" / "000000.png") as im:
        assert im.mode.startswith(mode[0])
    got = VOCDataset(voc)[0].image
    assert got.dtype == np.uint8 and got.shape == (64, 64, 3)
    np.testing.assert_array_equal(got, expected)


def test_voc_exif_rotated_image(voc):
    stored = np.zeros((64, 32, 3), np.uint8)  # 32 wide, 64 high as stored
    stored[0, 0] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: 64 wide, 32 high
    path = voc / "JPEGImages" / "000000.png"
    Image.fromarray(stored).save(path, exif=exif)
    (voc / "SegmentationObject" / "000000.png").unlink()
    assert images.image_size(path) == (64, 32)
    xml = _set(voc, {"size/width": "64", "size/height": "32", "object/name": "disc"})
    _box(voc, 1, 1, 64, 32)
    sample = VOCDataset(voc)[0]
    expected = np.asarray(Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270))
    np.testing.assert_array_equal(sample.image, expected)
    assert sample.image.shape == (32, 64, 3)
    _set(voc, {"size/width": "32", "size/height": "64"})  # annotated on the stored pixels
    with pytest.raises(ValueError, match=re.escape(f"{xml}: <size> says 32x64") + ".*EXIF"):
        VOCDataset(voc)


# ------------------------------------------------------------------ weight checksums


@pytest.fixture
def shipped(tmp_path) -> Path:
    """Copies of the shipped shapes_vgg.pt and its JSON."""
    for suffix in (".pt", ".json"):
        shutil.copyfile(
            str(WEIGHTS.joinpath(f"shapes_vgg{suffix}")), tmp_path / f"shapes_vgg{suffix}"
        )
    return tmp_path / "shapes_vgg.pt"


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _mismatch(path: Path) -> str:
    return re.escape(f"{path}: checksum does not match {path.with_suffix('.json')}")


def test_sidecar_checksum_verified_by_load_state_dict_file(shipped):
    reference = load_state_dict_file(shipped)
    _flip(shipped)
    with pytest.raises(ValueError, match=_mismatch(shipped)) as info:
        load_state_dict_file(shipped)
    assert "re-train" in str(info.value) and "reinstall" in str(info.value)
    with pytest.raises(ValueError, match=_mismatch(shipped)):
        get_model("shapes_vgg", num_classes=12, weights=shipped)
    _flip(shipped)  # flipped back: loads again, the same tensors
    again = load_state_dict_file(shipped)
    assert all(torch.equal(again[k], v) for k, v in reference.items())


def test_shipped_file_is_verified_on_every_path(shipped):
    _flip(shipped)
    with pytest.raises(ValueError, match=_mismatch(shipped)):
        pretrained("shapes_vgg", root=shipped.parent)
    with pytest.raises(ValueError, match=_mismatch(shipped)):
        load_state_dict_file(shipped)


def test_any_name_with_a_json_sidecar_is_verified(tmp_path):
    path = tmp_path / "mine.pt"
    torch.save({"w": torch.arange(6.0)}, path)
    meta = {"sha256": "0" * 64, "note": "written by hand"}
    (tmp_path / "mine.json").write_text(json.dumps(meta), "utf-8")
    with pytest.raises(ValueError, match=_mismatch(path)):
        load_state_dict_file(path)
    os.remove(tmp_path / "mine.json")  # no sidecar: nothing to verify against
    assert torch.equal(load_state_dict_file(path)["w"], torch.arange(6.0))


def test_sidecar_without_a_checksum_is_not_one(tmp_path):
    path = tmp_path / "mine.pt"
    torch.save({"w": torch.ones(2)}, path)
    for content in ('["cat", "dog"]', '{"classes": ["cat", "dog"]}'):
        (tmp_path / "mine.json").write_text(content, "utf-8")
        assert torch.equal(load_state_dict_file(path)["w"], torch.ones(2))


def test_damaged_sidecar_is_an_error(tmp_path):
    path = tmp_path / "mine.pt"
    torch.save({"w": torch.ones(2)}, path)
    sidecar = tmp_path / "mine.json"
    sidecar.write_text('{"sha256": "ab', "utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{sidecar} (beside the weights mine.pt)")):
        load_state_dict_file(path)
    sidecar.write_text('{"sha256": "not a digest"}', "utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{sidecar}: 'sha256' is 'not a digest'")):
        load_state_dict_file(path)


def test_pretrained_json_must_record_the_checksum(shipped):
    sidecar = shipped.with_suffix(".json")
    meta = json.loads(sidecar.read_text("utf-8"))
    uppercase = dict(meta, sha256=meta["sha256"].upper())  # hex digits in either case
    sidecar.write_text(json.dumps(uppercase), "utf-8")
    assert pretrained("shapes_vgg", root=shipped.parent).name == "shapes_vgg"
    sidecar.write_text(json.dumps({k: v for k, v in meta.items() if k != "sha256"}), "utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{sidecar} records no 'sha256'")):
        pretrained("shapes_vgg", root=shipped.parent)


@pytest.mark.parametrize("name", ["../shapes_vgg.pt", "/tmp/shapes_vgg.pt", "sub\\x.pt", ""])
def test_pretrained_weights_name_stays_in_its_folder(shipped, name):
    sidecar = shipped.with_suffix(".json")
    meta = json.loads(sidecar.read_text("utf-8"))
    sidecar.write_text(json.dumps(dict(meta, weights=name)), "utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{sidecar}: 'weights' is {name!r}")):
        pretrained("shapes_vgg", root=shipped.parent)


def test_verify_sha256_accepts_the_right_digest():
    digest = "a665a45920422f9d417e4867efdc4fb8a04a1f3fff1fa07e998e86f7f7a27ae3"  # sha256(b"123")
    verify_sha256(b"123", digest, "f.pt", "f.json")
    with pytest.raises(ValueError, match="f.pt: checksum does not match f.json"):
        verify_sha256(b"124", digest, "f.pt", "f.json")
