"""sglrp: Softmax-Gradient Layer-wise Relevance Propagation for PyTorch image classifiers.

``sglrp.explain(model, x, target, method="sglrp")`` returns signed relevance of x's shape.
"""

from . import rules
from .api import available_methods, explain, heatmap
from .presets import PRESETS, bounds_from_normalization
from .rules import RuleMap

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "RuleMap",
    "available_methods",
    "bounds_from_normalization",
    "explain",
    "heatmap",
    "rules",
]
