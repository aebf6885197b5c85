"""Vision Transformer (Dosovitskiy et al. 2021) with torchvision's exact module layout and keys.

``conv_proj`` (patchify convolution) -> prepend ``class_token`` -> ``encoder`` (add
``encoder.pos_embedding``, ``encoder.layers.encoder_layer_{i}`` of :class:`EncoderBlock`,
final ``encoder.ln``) -> class token -> ``heads.head``. Attention is PyTorch's
``nn.MultiheadAttention`` (``self_attention.in_proj_weight``, ``self_attention.out_proj``),
as in torchvision. :func:`vit_b_16` is torchvision's ViT-B/16; :func:`vit_tiny` a small
configuration for 64x64 images. torchvision itself is never imported.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = [
    "Encoder",
    "EncoderBlock",
    "MLPBlock",
    "VisionTransformer",
    "remap_legacy_mlp_keys",
    "shapes_vit",
    "vit_b_16",
    "vit_tiny",
]

V = TypeVar("V")

_LAYER_NORM: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-6)
"""Default norm of the encoder: ``nn.LayerNorm(..., eps=1e-6)``."""

_LEGACY_MLP_KEY = re.compile(r"^(.*mlp\.)linear_([12])\.(weight|bias)$")


def remap_legacy_mlp_keys(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Rename old-style MLP keys (``mlp.linear_1.weight`` -> ``mlp.0.weight``, ``linear_2`` -> 3).

    torchvision's ViT checkpoints saved before its ``MLPBlock`` became an ``MLP`` sequence use
    the old names; new-style keys are returned unchanged, in the same order.
    """
    out: dict[str, V] = {}
    for key, value in state_dict.items():
        match = _LEGACY_MLP_KEY.match(key)
        if match:
            key = f"{match.group(1)}{3 * (int(match.group(2)) - 1)}.{match.group(3)}"
        out[key] = value
    return out


class MLPBlock(nn.Sequential):
    """Transformer MLP: Linear -> GELU -> Dropout -> Linear -> Dropout (children ``0`` ... ``4``).

    Old checkpoints with ``linear_1`` / ``linear_2`` keys load too (see
    :func:`remap_legacy_mlp_keys`).
    """

    _version = 2

    def __init__(self, in_dim: int, mlp_dim: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(in_dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, in_dim),
            nn.Dropout(dropout),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        version = local_metadata.get("version")
        if version is None or version < 2:
            for i in (1, 2):
                for kind in ("weight", "bias"):
                    old = f"{prefix}linear_{i}.{kind}"
                    if old in state_dict:
                        state_dict[f"{prefix}{3 * (i - 1)}.{kind}"] = state_dict.pop(old)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x = x + dropout(attn(ln_1(x)))``; ``x + mlp(ln_2(x))``.

    ``attn`` is ``nn.MultiheadAttention`` (batch first) called as ``attn(y, y, y,
    need_weights=False)``: ``softmax(Q K^T / sqrt(d)) V`` per head, then ``out_proj``.

    Parameters
    ----------
    num_heads, hidden_dim, mlp_dim : int
        Heads, token width, MLP hidden width.
    dropout, attention_dropout : float
        Dropout after attention / in the MLP, and on the attention weights.
    norm_layer : callable
        Normalisation factory, ``nn.LayerNorm(eps=1e-6)`` by default.
    """

    def __init__(
        self,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float,
        attention_dropout: float,
        norm_layer: Callable[..., nn.Module] = _LAYER_NORM,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ln_1 = norm_layer(hidden_dim)
        self.self_attention = nn.MultiheadAttention(
            hidden_dim, num_heads, dropout=attention_dropout, batch_first=True
        )
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = norm_layer(hidden_dim)
        self.mlp = MLPBlock(hidden_dim, mlp_dim, dropout)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Return the block output for tokens of shape (N, S, hidden_dim)."""
        if input.dim() != 3:
            raise ValueError(
                f"EncoderBlock expects (batch, seq_length, hidden_dim), got {tuple(input.shape)}"
            )
        x = self.ln_1(input)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x)
        x = x + input
        y = self.ln_2(x)
        y = self.mlp(y)
        return x + y


class Encoder(nn.Module):
    """Add ``pos_embedding``, dropout, ``layers`` (``encoder_layer_{i}``), final ``ln``."""

    def __init__(
        self,
        seq_length: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float,
        attention_dropout: float,
        norm_layer: Callable[..., nn.Module] = _LAYER_NORM,
    ) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i in range(num_layers):
            layers[f"encoder_layer_{i}"] = EncoderBlock(
                num_heads, hidden_dim, mlp_dim, dropout, attention_dropout, norm_layer
            )
        self.layers = nn.Sequential(layers)
        self.ln = norm_layer(hidden_dim)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Return ``ln(layers(dropout(input + pos_embedding)))`` for tokens (N, S, hidden_dim)."""
        if input.dim() != 3:
            raise ValueError(
                f"Encoder expects (batch, seq_length, hidden_dim), got {tuple(input.shape)}"
            )
        input = input + self.pos_embedding
        return self.ln(self.layers(self.dropout(input)))


class VisionTransformer(nn.Module):
    """ViT classifier on ``image_size`` x ``image_size`` images cut into square patches.

    Parameters
    ----------
    image_size, patch_size : int
        Input side and patch side (``image_size`` must be a multiple of ``patch_size``).
    num_layers, num_heads, hidden_dim, mlp_dim : int
        Encoder depth, attention heads, token width, MLP hidden width.
    dropout, attention_dropout : float
        Dropout probabilities (0 in torchvision's ViT-B/16).
    num_classes : int
        Number of output logits.
    representation_size : int or None
        Width of an extra Linear + Tanh (``heads.pre_logits``, ``heads.act``) before the head.
    norm_layer : callable
        Normalisation factory, ``nn.LayerNorm(eps=1e-6)`` by default.
    stem : sequence of int or "M", optional
        A hybrid patch embedding (Dosovitskiy et al. 2021, sec. 3.1 "Hybrid Architecture"):
        ``conv_proj`` becomes 3x3 convolutions (ints: widths, each with batch norm and ReLU)
        and 2x2 max-pools (``"M"``) laid out as a VGG ``features`` block (children ``0``,
        ``1``, ...), then ``conv_proj.conv_last``, a convolution with kernel and stride
        ``patch_size / 2**pools`` into ``hidden_dim``: the tokens are still the
        ``patch_size`` x ``patch_size`` cells of the image. ``None`` (default): one
        patchifying convolution, as torchvision's ViTs.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        num_classes: int = 1000,
        representation_size: int | None = None,
        norm_layer: Callable[..., nn.Module] = _LAYER_NORM,
        stem: Sequence[int | str] | None = None,
    ) -> None:
        super().__init__()
        if image_size % patch_size != 0:
            raise ValueError(
                f"image_size {image_size} is not a multiple of patch_size {patch_size}"
            )
        if hidden_dim % num_heads != 0:
            raise ValueError(f"hidden_dim {hidden_dim} is not a multiple of num_heads {num_heads}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.mlp_dim = mlp_dim
        self.attention_dropout = attention_dropout
        self.dropout = dropout
        self.num_classes = num_classes
        self.representation_size = representation_size
        self.norm_layer = norm_layer

        self.conv_proj: nn.Module = (
            nn.Conv2d(3, hidden_dim, kernel_size=patch_size, stride=patch_size)
            if stem is None
            else _hybrid_stem(stem, patch_size, hidden_dim)
        )
        seq_length = (image_size // patch_size) ** 2 + 1  # patches and the class token
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.encoder = Encoder(
            seq_length,
            num_layers,
            num_heads,
            hidden_dim,
            mlp_dim,
            dropout,
            attention_dropout,
            norm_layer,
        )
        self.seq_length = seq_length

        heads: OrderedDict[str, nn.Module] = OrderedDict()
        if representation_size is None:
            heads["head"] = nn.Linear(hidden_dim, num_classes)
        else:
            heads["pre_logits"] = nn.Linear(hidden_dim, representation_size)
            heads["act"] = nn.Tanh()
            heads["head"] = nn.Linear(representation_size, num_classes)
        self.heads = nn.Sequential(heads)

        if stem is None:
            fan_in = 3 * patch_size * patch_size
            nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
            nn.init.zeros_(self.conv_proj.bias)
        if representation_size is not None:
            nn.init.trunc_normal_(
                self.heads.pre_logits.weight, std=math.sqrt(1 / self.heads.pre_logits.in_features)
            )
            nn.init.zeros_(self.heads.pre_logits.bias)
        nn.init.zeros_(self.heads.head.weight)
        nn.init.zeros_(self.heads.head.bias)

    def _process_input(self, x: torch.Tensor) -> torch.Tensor:
        """Patchify (N, 3, H, W) into tokens (N, (H/p) (W/p), hidden_dim), row-major."""
        if x.dim() != 4 or x.shape[2] != self.image_size or x.shape[3] != self.image_size:
            raise ValueError(
                f"VisionTransformer expects images of shape (N, 3, {self.image_size}, "
                f"{self.image_size}), got {tuple(x.shape)}; resize the input to "
                f"{self.image_size}x{self.image_size}"
            )
        n, _, h, w = x.shape
        p = self.patch_size
        x = self.conv_proj(x)
        x = x.reshape(n, self.hidden_dim, (h // p) * (w // p))
        return x.permute(0, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes) for images of shape (N, 3, H, W)."""
        x = self._process_input(x)
        n = x.shape[0]
        batch_class_token = self.class_token.expand(n, -1, -1)
        x = torch.cat([batch_class_token, x], dim=1)
        x = self.encoder(x)
        x = x[:, 0]
        return self.heads(x)


def _hybrid_stem(stem: Sequence[int | str], patch_size: int, hidden_dim: int) -> nn.Sequential:
    """VGG-style convolutions and pools, then a ``conv_last`` onto the patch grid."""
    layers = nn.Sequential()
    channels, stride = 3, 1
    for item in stem:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            stride *= 2
        elif isinstance(item, int) and not isinstance(item, bool) and item > 0:
            layers.append(nn.Conv2d(channels, item, 3, padding=1))
            layers.append(nn.BatchNorm2d(item))
            layers.append(nn.ReLU(inplace=True))
            channels = item
        else:
            raise ValueError(f"stem entries are positive ints or 'M', got {item!r}")
    if patch_size % stride:
        raise ValueError(
            f"the stem pools by {stride}, which does not divide patch_size {patch_size}; "
            "use fewer 'M' entries or a larger patch_size"
        )
    kernel = patch_size // stride
    layers.add_module("conv_last", nn.Conv2d(channels, hidden_dim, kernel, stride=kernel))
    for m in layers.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return layers


def vit_b_16(num_classes: int = 1000, **kwargs: Any) -> VisionTransformer:
    """ViT-B/16 on 224x224 images (12 layers, 12 heads, width 768, MLP 3072).

    ``kwargs`` go to :class:`VisionTransformer` (``image_size``, ``dropout``, ...).
    """
    kwargs.setdefault("image_size", 224)
    return VisionTransformer(
        patch_size=16,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        mlp_dim=3072,
        num_classes=num_classes,
        **kwargs,
    )


def vit_tiny(num_classes: int = 1000, **kwargs: Any) -> VisionTransformer:
    """A small ViT for 64x64 images: 8x8 patches (64 tokens + class token), 4 layers, 4 heads,
    width 128, MLP 256 (563,328 parameters plus 129 per class in the head).

    Every setting can be overridden through ``kwargs`` (``image_size``, ``patch_size``,
    ``num_layers``, ``num_heads``, ``hidden_dim``, ``mlp_dim``, ``dropout``, ...).
    """
    settings: dict[str, Any] = {
        "image_size": 64,
        "patch_size": 8,
        "num_layers": 4,
        "num_heads": 4,
        "hidden_dim": 128,
        "mlp_dim": 256,
    }
    settings.update(kwargs)
    return VisionTransformer(num_classes=num_classes, **settings)


SHAPES_VIT: dict[str, Any] = {
    "image_size": 64,
    "patch_size": 8,
    "num_layers": 4,
    "num_heads": 4,
    "hidden_dim": 128,
    "mlp_dim": 256,
    "stem": [16, 16, "M", 32, 32, "M", 64, 64, "M"],
}
"""Default settings of :func:`shapes_vit` (the shipped weights record theirs in metadata)."""


def shapes_vit(num_classes: int = 12, **kwargs: Any) -> VisionTransformer:
    """ViT for the 64x64 shape images (:data:`SHAPES_VIT`: 8x8 patches, 4 layers, 4 heads,
    width 128, MLP 256); ``kwargs`` override any :class:`VisionTransformer` setting."""
    return VisionTransformer(num_classes=num_classes, **{**SHAPES_VIT, **kwargs})
