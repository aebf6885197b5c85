"""sglrp: Softmax-Gradient Layer-wise Relevance Propagation for PyTorch image classifiers.

``sglrp.explain(model, x, target, method="sglrp")`` returns signed relevance of x's shape;
``sglrp.inspect(model, x)`` lists what the engine does with every operation of the model.
"""

from . import methods, rules
from .api import Explainer, available_methods, explain, heatmap
from .inspection import Inspection, inspect
from .presets import PRESETS, bounds_from_normalization
from .rules import RuleMap
from .targets import Target

__version__ = "0.2.0"

__all__ = [
    "PRESETS",
    "Explainer",
    "Inspection",
    "RuleMap",
    "Target",
    "available_methods",
    "bounds_from_normalization",
    "explain",
    "heatmap",
    "inspect",
    "methods",
    "rules",
]
