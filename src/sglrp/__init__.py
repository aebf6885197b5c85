"""sglrp: Softmax-Gradient Layer-wise Relevance Propagation for PyTorch image classifiers."""

__version__ = "0.1.0"
