"""Placeholder: being written."""
PretrainedModel = None
available_pretrained = None
pretrained = None
