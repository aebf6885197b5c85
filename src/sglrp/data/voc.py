"""Pascal VOC style export and import of annotated images.

Folder layout written by :func:`export_voc` and read by :func:`load_voc`::

    folder/
        JPEGImages/<id>.png          the image (PNG, lossless, despite the VOC folder name)
        Annotations/<id>.xml         VOC XML: filename, size, one <object> per object
        SegmentationObject/<id>.png  palette PNG: 0 = background, k = k-th <object> (1-based)
        ImageSets/Main/all.txt       the ids, one a line

``<id>`` is the zero-padded sample index (``000000``, ``000001``, ...), so sorting by name
keeps the original order. Objects appear in the XML in drawing order.

Boxes: VOC ``bndbox`` values are 1-based and inclusive, ``sglrp.data`` boxes are 0-based and
inclusive-exclusive, so ``xmin = x0 + 1``, ``ymin = y0 + 1``, ``xmax = x1``, ``ymax = y1``
(and back: ``x0 = xmin - 1``, ``x1 = xmax``).

Masks: visible masks of one image never overlap, so a single ``SegmentationObject`` image per
sample stores all of them exactly, as in Pascal VOC. A data set with boxes only (ImageNet
validation XML, for instance) has no such folder; :func:`load_voc` then gives ``mask=None``,
or the filled box with ``box_masks=True``.

Reading (:class:`VOCDataset`, :func:`load_voc`) checks every annotation file when the folder
is opened, reading only the images' headers, and names the file (and the object) in every
error:

* the XML must parse, have ``<annotation>`` as root element and hold a ``<filename>``, and
  each ``<object>`` a ``<name>`` from ``classes`` and a ``<bndbox>`` with numeric ``xmin``,
  ``ymin``, ``xmax``, ``ymax`` (fractions are rounded to the nearest pixel);
* ``<filename>`` is confined to ``JPEGImages/``: absolute names, ``..`` and files that are
  symlinks to somewhere outside that folder are refused (a symlinked ``JPEGImages/`` itself
  is fine). A name without extension, as in ImageNet's XML, finds ``NAME.JPEG``, ``.jpg``,
  ``.jpeg`` or ``.png``. Annotation and ``SegmentationObject`` files are confined likewise;
* images larger than :data:`sglrp.images.MAX_PIXELS` (or ``max_pixels``) are refused from
  their header; an optional ``<size>`` must equal the image's size (``0 x 0`` means unknown);
* boxes: a VOC box covers the pixels ``xmin ... xmax`` inclusive, so its width is
  ``xmax - xmin + 1``. Non-numeric or non-finite (NaN, inf) coordinates, negative widths
  (inverted boxes) and zero widths (empty boxes) are errors. Coordinates outside the image
  (``0`` and negative ones included) are clipped to it, with one :class:`ClippedBoxWarning`
  naming the files and objects; a box that lies wholly outside the image is an error.

Pixels are decoded when a sample is accessed, by :func:`sglrp.images.load_image` (EXIF
orientation applied; grayscale, palette, alpha and 16-bit images converted to 8-bit RGB).
"""

from __future__ import annotations

import math
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import overload

import numpy as np
from PIL import Image

from ..atomic import atomic_path, write_text
from ..images import image_size, load_image, open_image
from .shapes import CLASSES, ObjectAnnotation, Sample

__all__ = ["ClippedBoxWarning", "VOCDataset", "export_voc", "load_voc"]

_IMAGES, _ANNOTATIONS, _SEGMENTATION = "JPEGImages", "Annotations", "SegmentationObject"
_EXTENSIONS = (".JPEG", ".jpg", ".jpeg", ".png")  # tried for a <filename> without extension
_SHOW = 5  # clipped boxes listed in a warning


def _palette() -> list[int]:
    """The Pascal VOC colour map (index 0 black), flattened for ``Image.putpalette``."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _xml(sample: Sample, sample_id: str, classes: Sequence[str]) -> str:
    h, w = sample.image.shape[:2]
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = _IMAGES
    ET.SubElement(root, "filename").text = f"{sample_id}.png"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(w)
    ET.SubElement(size, "height").text = str(h)
    ET.SubElement(size, "depth").text = "3"
    has_masks = all(obj.mask is not None for obj in sample.objects)
    ET.SubElement(root, "segmented").text = "1" if has_masks else "0"
    for obj in sample.objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = classes[obj.label] if obj.name is None else obj.name
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = "0"
        ET.SubElement(node, "difficult").text = "0"
        x0, y0, x1, y1 = obj.box
        box = ET.SubElement(node, "bndbox")
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(box, tag).text = str(int(value))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def export_voc(
    samples: Sequence[Sample], folder: str | os.PathLike, classes: Sequence[str] = CLASSES
) -> Path:
    """Write samples as a Pascal VOC style folder (layout in the module docstring).

    Every file is written atomically. Returns the folder.
    """
    folder = Path(folder)
    for sub in (_IMAGES, _ANNOTATIONS, _SEGMENTATION, "ImageSets/Main"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(max(len(samples) - 1, 0))))
    palette = _palette()
    ids = []
    for i, sample in enumerate(samples):
        if len(sample.objects) > 255:
            raise ValueError("a SegmentationObject PNG holds at most 255 objects per image")
        sample_id = f"{i:0{width}d}"
        ids.append(sample_id)
        with atomic_path(folder / _IMAGES / f"{sample_id}.png") as tmp:
            Image.fromarray(np.asarray(sample.image, dtype=np.uint8), "RGB").save(tmp)
        write_text(folder / _ANNOTATIONS / f"{sample_id}.xml", _xml(sample, sample_id, classes))
        if sample.objects and all(obj.mask is not None for obj in sample.objects):
            index = np.zeros(sample.image.shape[:2], dtype=np.uint8)
            for k, obj in enumerate(sample.objects, start=1):
                if (index[obj.mask] != 0).any():
                    raise ValueError(
                        f"sample {i}: object masks overlap; store visible (occluded) masks"
                    )
                index[obj.mask] = k
            seg = Image.fromarray(index, "P")
            seg.putpalette(palette)
            with atomic_path(folder / _SEGMENTATION / f"{sample_id}.png") as tmp:
                seg.save(tmp)
    write_text(folder / "ImageSets" / "Main" / "all.txt", "".join(f"{s}\n" for s in ids))
    return folder


class ClippedBoxWarning(UserWarning):
    """Boxes reaching outside their image were clipped to it (see the module docstring)."""


@dataclass(frozen=True)
class _Entry:
    """One checked annotation file: everything but the pixels."""

    image: Path
    size: tuple[int, int]  # (width, height) of the decoded image
    objects: tuple[tuple[int, str, tuple[int, int, int, int]], ...]  # label, name, box
    seg: Path | None


class VOCDataset(Sequence[Sample]):
    """A Pascal VOC style folder whose images are decoded only when a sample is accessed.

    Every annotation is read and checked when the dataset is made (policy in the module
    docstring), reading only the images' headers; ``ds[i]`` then decodes image ``i`` (and its
    ``SegmentationObject`` PNG).

    Parameters
    ----------
    folder
        Folder with ``Annotations/*.xml`` and the images they name in ``JPEGImages/``.
    classes
        Class names; an object's label is the position of its ``<name>`` in this list.
    box_masks
        When an image has no ``SegmentationObject`` PNG: ``False`` gives ``mask=None``,
        ``True`` gives the filled bounding box as mask.
    max_pixels
        Largest image (width x height) accepted; ``None`` uses
        :data:`sglrp.images.MAX_PIXELS`.

    Attributes
    ----------
    ids
        The annotation file stems, in file-name order (the order of the samples).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        classes: Sequence[str] = CLASSES,
        *,
        box_masks: bool = False,
        max_pixels: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.classes = tuple(classes)
        self.box_masks = box_masks
        self.max_pixels = max_pixels
        ann_dir = self.folder / _ANNOTATIONS
        if not ann_dir.is_dir():
            raise FileNotFoundError(
                f"{ann_dir} does not exist; pass a folder written by export_voc or a VOC-style "
                "folder with Annotations/ and JPEGImages/"
            )
        lookup = {name: i for i, name in enumerate(self.classes)}
        paths = sorted(ann_dir.glob("*.xml"))
        self.ids = [p.stem for p in paths]
        self._entries: list[_Entry] = []
        clipped: list[str] = []
        for xml_path in paths:
            entry, notes = _read_annotation(self.folder, xml_path, lookup, max_pixels)
            self._entries.append(entry)
            clipped += [f"{xml_path}: {note}" for note in notes]
        if clipped:
            more = f"; ... ({len(clipped)} boxes in all)" if len(clipped) > _SHOW else ""
            warnings.warn(
                f"boxes reaching outside their image were clipped to it: "
                f"{'; '.join(clipped[:_SHOW])}{more}",
                ClippedBoxWarning,
                stacklevel=2,
            )

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        entry = self._entries[index]
        w, h = entry.size
        image = np.array(load_image(entry.image, max_pixels=self.max_pixels))
        if image.shape[:2] != (h, w):
            raise ValueError(
                f"{entry.image} is {image.shape[1]}x{image.shape[0]} but was {w}x{h} when "
                f"{self.folder} was opened; it changed on disk - open the folder again"
            )
        seg = None if entry.seg is None else _read_index_png(entry.seg, (w, h), self.max_pixels)
        objects = []
        for k, (label, name, box) in enumerate(entry.objects, start=1):
            if seg is not None:
                mask = seg == k
            elif self.box_masks:
                mask = np.zeros((h, w), dtype=bool)
                mask[box[1] : box[3], box[0] : box[2]] = True
            else:
                mask = None
            objects.append(ObjectAnnotation(label, name, box, mask))
        label = objects[0].label if len(objects) == 1 else None
        return Sample(image, objects, label)


def load_voc(
    folder: str | os.PathLike,
    classes: Sequence[str] = CLASSES,
    *,
    box_masks: bool = False,
    max_pixels: int | None = None,
) -> list[Sample]:
    """Read a Pascal VOC style folder (as written by :func:`export_voc`) back into samples.

    All images are decoded; :class:`VOCDataset` decodes them one at a time on access.

    Parameters
    ----------
    folder, classes, box_masks, max_pixels
        As for :class:`VOCDataset`.

    Returns
    -------
    list of Sample
        In file-name order; ``label`` is the single object's label for one-object images and
        ``None`` otherwise.
    """
    return list(VOCDataset(folder, classes, box_masks=box_masks, max_pixels=max_pixels))


def _text(node: ET.Element, tag: str, where: str) -> str:
    """The stripped text of ``node``'s child ``tag``; an error naming ``where`` if absent."""
    child = node.find(tag)
    text = "" if child is None or child.text is None else child.text.strip()
    if not text:
        raise ValueError(
            f"{where}: missing or empty <{tag}>; every Pascal VOC annotation needs one"
        )
    return text


def _inside(path: Path, root: Path, what: str) -> Path:
    """``path`` if it resolves (symlinks followed) inside folder ``root``, else an error."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ValueError(
            f"{what}: {path} is a link to {resolved}, outside {root}; files must lie inside "
            "the data folder - copy the file in (or link the whole folder instead)"
        )
    return path


def _image_path(folder: Path, name: str, where: str) -> Path:
    """The image ``<filename>`` names, confined to ``folder/JPEGImages``."""
    images = folder / _IMAGES
    if "\x00" in name:
        raise ValueError(f"{where}: <filename> {name!r} contains a NUL character")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.anchor:
        raise ValueError(
            f"{where}: <filename> {name!r} is an absolute path; it must name a file inside "
            f"{images} (relative to it)"
        )
    if ".." in posix.parts or ".." in windows.parts:
        raise ValueError(
            f"{where}: <filename> {name!r} leaves {images} ('..'); it must name a file inside it"
        )
    path = images / name
    if not path.exists() and not posix.suffix:  # ImageNet's XML names images without extension
        path = next((p for e in _EXTENSIONS if (p := images / f"{name}{e}").exists()), path)
    if not path.exists():
        raise FileNotFoundError(f"{path} (named in {where}) does not exist")
    return _inside(path, images, where)


def _coordinate(box: ET.Element, tag: str, where: str) -> int:
    """A ``<bndbox>`` coordinate, rounded to the nearest pixel; finite numbers only."""
    text = _text(box, tag, where)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: <{tag}> is {text!r}, not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: <{tag}> is {text!r}, not a finite number; fix the box")
    return int(round(value))


def _size(root: ET.Element, where: str) -> tuple[int, int] | None:
    """``(width, height)`` from ``<size>``, or ``None`` when absent or ``0 x 0`` (unknown)."""
    node = root.find("size")
    if node is None:
        return None
    values = []
    for tag in ("width", "height"):
        text = _text(node, tag, where)
        try:
            values.append(int(text))
        except ValueError:
            raise ValueError(f"{where}: <size><{tag}> is {text!r}, not an integer") from None
    if values == [0, 0]:
        return None
    if min(values) < 1:
        raise ValueError(f"{where}: <size> is {values[0]}x{values[1]}; sizes must be positive")
    return values[0], values[1]


def _read_annotation(
    folder: Path, xml_path: Path, lookup: dict[str, int], max_pixels: int | None
) -> tuple[_Entry, list[str]]:
    """Check one annotation file (policy in the module docstring); also the clipping notes."""
    where = str(xml_path)
    _inside(xml_path, folder / _ANNOTATIONS, where)
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{where}: not valid XML ({err})") from None
    if root.tag != "annotation":
        raise ValueError(
            f"{where}: the root element is <{root.tag}>, not <annotation>; is this a Pascal VOC "
            "annotation file?"
        )
    image = _image_path(folder, _text(root, "filename", where), where)
    try:
        w, h = image_size(image, max_pixels=max_pixels)
    except ValueError as err:
        raise type(err)(f"{err} (named in {where})") from err
    stated = _size(root, where)
    if stated is not None and stated != (w, h):
        hint = (
            "its EXIF orientation rotates the stored pixels; re-save the image upright "
            "(PIL.ImageOps.exif_transpose) or swap <width> and <height> and the box axes"
            if stated == (h, w)
            else "the annotation belongs to another version of the image; use that image, or "
            "fix <size> and the boxes"
        )
        raise ValueError(
            f"{where}: <size> says {stated[0]}x{stated[1]} but {image.name} is {w}x{h}: {hint}"
        )
    objects, notes = [], []
    for k, node in enumerate(root.findall("object"), start=1):
        name = _text(node, "name", f"{where}: object {k}")
        here = f"{where}: object {k} ({name})"
        if name not in lookup:
            raise ValueError(
                f"{here}: class {name!r} is not in the class list; "
                "pass classes=[...] with every class name of the data set"
            )
        box_node = node.find("bndbox")
        if box_node is None:
            raise ValueError(f"{here}: missing <bndbox>; every object needs its box")
        xmin, ymin, xmax, ymax = (
            _coordinate(box_node, t, here) for t in ("xmin", "ymin", "xmax", "ymax")
        )
        for axis, lo, hi in (("x", xmin, xmax), ("y", ymin, ymax)):
            if hi < lo - 1:
                raise ValueError(
                    f"{here}: inverted box: {axis}max {hi} < {axis}min {lo}; swap them if the "
                    "corners were written in the wrong order"
                )
            if hi == lo - 1:
                raise ValueError(
                    f"{here}: empty box: {axis}max {hi} = {axis}min {lo} - 1 covers no pixel "
                    "(VOC boxes include both ends); fix or remove the object"
                )
        box = (max(xmin - 1, 0), max(ymin - 1, 0), min(xmax, w), min(ymax, h))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(
                f"{here}: box ({xmin}, {ymin}, {xmax}, {ymax}) lies entirely outside the "
                f"{w}x{h} image; fix or remove the object"
            )
        if box != (xmin - 1, ymin - 1, xmax, ymax):
            notes.append(
                f"object {k} ({name}) box ({xmin}, {ymin}, {xmax}, {ymax}) clipped to the "
                f"{w}x{h} image"
            )
        objects.append((lookup[name], name, box))
    seg = folder / _SEGMENTATION / f"{xml_path.stem}.png"
    seg = _inside(seg, folder / _SEGMENTATION, where) if seg.exists() else None
    return _Entry(image, (w, h), tuple(objects), seg), notes


def _read_index_png(path: Path, size: tuple[int, int], max_pixels: int | None) -> np.ndarray:
    """The object-index array of a ``SegmentationObject`` PNG of image size ``size``."""
    with open_image(path, max_pixels=max_pixels) as im:
        mode, found = im.mode, im.size
        index = np.array(im) if mode in ("P", "L") and found == size else None
    if mode not in ("P", "L"):
        raise ValueError(
            f"{path}: a SegmentationObject PNG must hold object indices (mode P or L), not "
            f"mode {mode}; save the index image, not its colour rendering"
        )
    if index is None:
        raise ValueError(
            f"{path} is {found[0]}x{found[1]} but its image is {size[0]}x{size[1]}; the mask "
            "belongs to another version of the image"
        )
    return index
