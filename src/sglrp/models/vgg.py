"""Placeholder: being written."""
VGG = None
vgg11 = None
vgg16 = None
vgg16_bn = None
