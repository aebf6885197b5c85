"""SGLRP on the shipped ViT: it sums to zero, and it contrasts the two objects of an image.

* With every bias, the class token and the position embedding zeroed (float64), SGLRP with
  LRP-0 and CP attention sums to zero over the input to 1e-9 of its absolute sum (the shipped
  weights otherwise): what the output relevance sums to (0) reaches the pixels.
* On held-out two-object images that the model ranks both objects of in its top 2, the SGLRP
  maps (the model's default preset, ``epsilon-plus`` for this hybrid: z+ on the stem's
  convolutions, epsilon on the linear layers, CP attention) for the two present classes
  differ in sign where the objects are:
  the map for class a sums to > 0 on object a's mask and to < 0 on object b's, and the other
  way round for class b.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sglrp
from sglrp.data import generate
from sglrp.models import available_pretrained, pretrained
from sglrp.presets import default_preset

HELD_OUT_SEED = 777

pytestmark = pytest.mark.skipif(
    "shapes_vit" not in available_pretrained(),
    reason="shapes_vit weights are not shipped yet (train with `sglrp train --model shapes_vit`)",
)


@pytest.fixture(scope="module", autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vit():
    return pretrained("shapes_vit")


def _two_object_images(pm, count: int):
    """The first ``count`` held-out two-object images whose two classes are the model's top 2:
    images (N, 3, H, W), classes (N, 2) and masks (N, 2, H, W)."""
    samples = generate("multi", 60, seed=HELD_OUT_SEED, num_objects=2)
    x = pm.preprocess(np.stack([s.image for s in samples]))
    with torch.no_grad():
        top2 = pm.model(x).topk(2, dim=1).indices
    keep = [i for i, s in enumerate(samples) if set(top2[i].tolist()) == set(s.labels)][:count]
    assert len(keep) == count
    classes = torch.tensor([[o.label for o in samples[i].objects] for i in keep])
    masks = torch.from_numpy(np.stack([[o.mask for o in samples[i].objects] for i in keep]))
    return x[keep], classes, masks


def test_sglrp_sums_to_zero_on_the_shipped_vit(vit) -> None:
    model = pretrained("shapes_vit").model.double()
    with torch.no_grad():
        for m in model.modules():
            for name, p in m.named_parameters(recurse=False):
                if "bias" in name:
                    p.zero_()
            if isinstance(m, nn.BatchNorm2d):  # the hybrid stem: no shift left in it either
                m.running_mean.zero_()
        model.class_token.zero_()
        model.encoder.pos_embedding.zero_()
    x, _, _ = _two_object_images(vit, 4)
    r = sglrp.explain(model, x.double(), "predicted", method="sglrp", rules="lrp0")
    total, size = r.sum((1, 2, 3)), r.abs().sum((1, 2, 3))
    assert (size > 0).all()
    assert (total.abs() <= 1e-9 * size).all(), (total / size).tolist()


def test_sglrp_contrasts_the_two_objects(vit) -> None:
    x, classes, masks = _two_object_images(vit, 6)
    bounds = sglrp.bounds_from_normalization(vit.mean, vit.std)
    rules = default_preset(vit.model)
    assert rules == "epsilon-plus"
    r = sglrp.explain(vit.model, x, classes, method="sglrp", rules=rules, bounds=bounds)
    r = r.sum(2)  # (N, 2 targets, H, W)
    on = torch.einsum("nkhw,nohw->nko", r, masks.double().to(r.dtype))  # target k, object o
    own = on.diagonal(dim1=1, dim2=2)  # (N, 2): each target's map on its own object
    other = on.flip(2).diagonal(dim1=1, dim2=2)  # on the other object
    assert (own > 0).all(), own.tolist()
    assert (other < 0).all(), other.tolist()


def test_maps_differ_from_lrp(vit) -> None:
    """LRP's map for the two classes is nearly the same; SGLRP's are not (its contrast)."""
    x, classes, _ = _two_object_images(vit, 4)
    bounds = sglrp.bounds_from_normalization(vit.mean, vit.std)
    options = {"rules": default_preset(vit.model), "bounds": bounds}
    s = sglrp.explain(vit.model, x, classes, method="sglrp", **options).sum(2).flatten(2)
    cos = nn.functional.cosine_similarity(s[:, 0], s[:, 1], dim=1)
    assert (cos < 0).all(), cos.tolist()
