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
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import atomic_path, write_text
from .shapes import CLASSES, ObjectAnnotation, Sample

__all__ = ["export_voc", "load_voc"]

_IMAGES, _ANNOTATIONS, _SEGMENTATION = "JPEGImages", "Annotations", "SegmentationObject"


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


def _text(node: ET.Element, tag: str, where: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        raise ValueError(f"{where}: missing <{tag}>; is this a Pascal VOC annotation file?")
    return child.text.strip()


def load_voc(
    folder: str | os.PathLike,
    classes: Sequence[str] = CLASSES,
    *,
    box_masks: bool = False,
) -> list[Sample]:
    """Read a Pascal VOC style folder (as written by :func:`export_voc`) back into samples.

    Parameters
    ----------
    folder
        Folder with ``Annotations/*.xml`` and the images they name in ``JPEGImages/``.
    classes
        Class names; an object's label is the position of its ``<name>`` in this list.
    box_masks
        When an image has no ``SegmentationObject`` PNG: ``False`` gives ``mask=None``,
        ``True`` gives the filled bounding box as mask.

    Returns
    -------
    list of Sample
        In file-name order; ``label`` is the single object's label for one-object images and
        ``None`` otherwise.
    """
    folder = Path(folder)
    ann_dir = folder / _ANNOTATIONS
    if not ann_dir.is_dir():
        raise FileNotFoundError(
            f"{ann_dir} does not exist; pass a folder written by export_voc or a VOC-style "
            "folder with Annotations/ and JPEGImages/"
        )
    lookup = {name: i for i, name in enumerate(classes)}
    samples = []
    for xml_path in sorted(ann_dir.glob("*.xml")):
        root = ET.parse(xml_path).getroot()
        image_path = folder / _IMAGES / _text(root, "filename", xml_path)
        if not image_path.exists():
            raise FileNotFoundError(f"{image_path} (named in {xml_path}) does not exist")
        with Image.open(image_path) as im:
            image = np.array(im.convert("RGB"))
        h, w = image.shape[:2]
        seg_path = folder / _SEGMENTATION / f"{xml_path.stem}.png"
        seg = None
        if seg_path.exists():
            with Image.open(seg_path) as im:
                seg = np.array(im)
        objects = []
        for k, node in enumerate(root.findall("object"), start=1):
            name = _text(node, "name", xml_path)
            if name not in lookup:
                raise ValueError(
                    f"{xml_path}: class {name!r} is not in the class list; "
                    "pass classes=[...] with every class name of the data set"
                )
            box_node = node.find("bndbox")
            if box_node is None:
                raise ValueError(f"{xml_path}: an <object> has no <bndbox>")
            xmin, ymin, xmax, ymax = (
                int(round(float(_text(box_node, t, xml_path))))
                for t in ("xmin", "ymin", "xmax", "ymax")
            )
            box = (max(xmin - 1, 0), max(ymin - 1, 0), min(xmax, w), min(ymax, h))
            if seg is not None:
                mask = seg == k
            elif box_masks:
                mask = np.zeros((h, w), dtype=bool)
                mask[box[1] : box[3], box[0] : box[2]] = True
            else:
                mask = None
            objects.append(ObjectAnnotation(lookup[name], name, box, mask))
        label = objects[0].label if len(objects) == 1 else None
        samples.append(Sample(image, objects, label))
    return samples
