"""How unlike the generated shapes images an image is: a simple colour-statistics distance.

The statistic of an RGB image (values in [0, 1]) is its per-channel mean and standard
deviation, ``s = (m_R, m_G, m_B, sd_R, sd_G, sd_B)``. Over generated images (the ``train``
split: :data:`REFERENCE_N` images of seed 0 at 64 px) these have mean :data:`MU` and
covariance :data:`COV`; an image's distance is the Mahalanobis distance

    D = sqrt((s - MU)^T COV^-1 (s - MU)),

and an image is *unlike* the generated ones when ``D`` exceeds :data:`THRESHOLD` (0.75 % of
the reference images do; ``tests/test_cli_caution.py`` recomputes the constants from the
generator). It sees colour and contrast only: a high-contrast or strongly coloured photograph
is flagged, a photo with the moderate contrast of the generated images is not. A caution,
not a proof.
"""

from __future__ import annotations

import numpy as np

__all__ = ["COV", "MU", "REFERENCE_N", "THRESHOLD", "image_statistic", "shapes_distance"]

#: Generated ``train`` images (seed 0, 64 px) behind :data:`MU` and :data:`COV`.
REFERENCE_N = 400
#: Mean statistic of the reference images.
MU = np.array([0.49435, 0.497986, 0.509598, 0.114799, 0.117698, 0.111556])
#: Covariance of the reference images' statistics (rounded to 1e-7).
COV = np.array(
    [
        [6.98450e-02, 2.16720e-03, -3.16430e-03, 5.24700e-04, -6.71500e-04, 4.34000e-05],
        [2.16720e-03, 6.96758e-02, 2.22040e-03, 3.59200e-04, -2.11370e-03, -2.95900e-04],
        [-3.16430e-03, 2.22040e-03, 6.52819e-02, -5.48600e-04, -6.17300e-04, -7.34700e-04],
        [5.24700e-04, 3.59200e-04, -5.48600e-04, 3.67900e-03, 3.55700e-04, 4.32100e-04],
        [-6.71500e-04, -2.11370e-03, -6.17300e-04, 3.55700e-04, 4.44260e-03, 3.98000e-04],
        [4.34000e-05, -2.95900e-04, -7.34700e-04, 4.32100e-04, 3.98000e-04, 3.58000e-03],
    ]
)
#: Distance above which an image is called unlike the generated ones.
THRESHOLD = 5.0

_PRECISION = np.linalg.inv(COV)


def image_statistic(image: np.ndarray) -> np.ndarray:
    """``(m_R, m_G, m_B, sd_R, sd_G, sd_B)`` of a uint8 (H, W, 3) image, in [0, 1] units."""
    a = np.asarray(image, dtype=np.float64) / 255.0
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {a.shape}")
    return np.concatenate([a.mean(axis=(0, 1)), a.std(axis=(0, 1))])


def shapes_distance(image: np.ndarray) -> float:
    """Mahalanobis distance ``D`` of an image's statistic from the generated images'."""
    d = image_statistic(image) - MU
    return float(np.sqrt(d @ _PRECISION @ d))
