"""Model zoo (torchvision-compatible layouts, no torchvision import) and shipped models."""

from .densenet import DenseNet, densenet121
from .inception import inception_small
from .pretrained import PretrainedModel, available_pretrained, pretrained
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet50
from .small import shapes_resnet, shapes_vgg
from .vgg import VGG, vgg11, vgg16, vgg16_bn
from .zoo import ZOO, get_model

__all__ = [
    "ZOO",
    "BasicBlock",
    "Bottleneck",
    "DenseNet",
    "PretrainedModel",
    "ResNet",
    "VGG",
    "available_pretrained",
    "densenet121",
    "get_model",
    "inception_small",
    "pretrained",
    "resnet18",
    "resnet50",
    "shapes_resnet",
    "shapes_vgg",
    "vgg11",
    "vgg16",
    "vgg16_bn",
]
