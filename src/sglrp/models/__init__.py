"""Model zoo (torchvision-compatible layouts, no torchvision import) and shipped models."""

from .convnext import ConvNeXt, convnext_tiny
from .densenet import DenseNet, densenet121
from .efficientnet import EfficientNet, efficientnet_b0
from .inception import inception_small
from .mobilenetv2 import MobileNetV2, mobilenet_v2
from .mobilenetv3 import MobileNetV3, mobilenet_v3_small
from .pretrained import PretrainedModel, available_pretrained, pretrained
from .regnet import RegNet, regnet_y_400mf
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet50
from .shufflenet import ShuffleNetV2, shufflenet_v2_x1_0
from .small import shapes_resnet, shapes_vgg, shapes_vgg_gap
from .vgg import VGG, vgg11, vgg16, vgg16_bn
from .vit import VisionTransformer, shapes_vit, vit_b_16, vit_tiny
from .zoo import ZOO, get_model

__all__ = [
    "ZOO",
    "BasicBlock",
    "Bottleneck",
    "ConvNeXt",
    "DenseNet",
    "EfficientNet",
    "MobileNetV2",
    "MobileNetV3",
    "PretrainedModel",
    "RegNet",
    "ResNet",
    "ShuffleNetV2",
    "VGG",
    "VisionTransformer",
    "available_pretrained",
    "convnext_tiny",
    "densenet121",
    "efficientnet_b0",
    "get_model",
    "inception_small",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "pretrained",
    "regnet_y_400mf",
    "resnet18",
    "resnet50",
    "shapes_resnet",
    "shapes_vgg",
    "shapes_vgg_gap",
    "shapes_vit",
    "shufflenet_v2_x1_0",
    "vgg11",
    "vgg16",
    "vgg16_bn",
    "vit_b_16",
    "vit_tiny",
]
