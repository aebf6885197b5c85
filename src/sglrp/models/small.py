"""Placeholder: being written."""
shapes_resnet = None
shapes_vgg = None
