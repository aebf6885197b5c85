"""Placeholder: being written."""
ZOO = None
get_model = None
