"""Generated shape images with exact ground truth, and Pascal VOC style export / import."""

from .imagenet import IMAGENET_NUM_CLASSES, imagenet_classes
from .mosaic import CELLS, Mosaic, mosaic
from .shapes import (
    CLASSES,
    MEAN,
    SPLITS,
    STD,
    ObjectAnnotation,
    Sample,
    ShapesDataset,
    dataset_stats,
    generate,
    to_images,
    to_tensor,
)
from .voc import ClippedBoxWarning, VOCDataset, export_voc, load_voc

__all__ = [
    "CELLS",
    "CLASSES",
    "IMAGENET_NUM_CLASSES",
    "ClippedBoxWarning",
    "MEAN",
    "SPLITS",
    "STD",
    "Mosaic",
    "ObjectAnnotation",
    "Sample",
    "ShapesDataset",
    "VOCDataset",
    "dataset_stats",
    "export_voc",
    "generate",
    "imagenet_classes",
    "load_voc",
    "mosaic",
    "to_images",
    "to_tensor",
]
