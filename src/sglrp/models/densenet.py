"""Placeholder: being written."""
DenseNet = None
densenet121 = None
