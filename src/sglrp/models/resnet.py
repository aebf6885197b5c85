"""Placeholder: being written."""
BasicBlock = None
Bottleneck = None
ResNet = None
resnet18 = None
resnet50 = None
