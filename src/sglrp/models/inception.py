"""Placeholder: being written."""
inception_small = None
