"""Does one convolution with W and W+ stacked along the output channels beat two?

The z+ denominator is a second convolution of the layer's input; stacking both weights into
one convolution reads the input once. Times, per VGG16 convolution shape, ``conv(x, W)`` +
``conv(x, W+)`` against ``conv(x, [W; W+])`` (min of 3 after a warm-up) and the sum over the
13 layers::

    python benchmarks/fused_conv.py --batches 1,8
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import best_time

#: (in channels, out channels, side) of VGG16's 13 convolutions at 224x224.
VGG16 = [(3, 64, 224), (64, 64, 224), (64, 128, 112), (128, 128, 112), (128, 256, 56)]
VGG16 += [(256, 256, 56)] * 2 + [(256, 512, 28)] + [(512, 512, 28)] * 2 + [(512, 512, 14)] * 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for n in (int(v) for v in args.batches.split(",")):
        two = one = 0.0
        for c_in, c_out, side in VGG16:
            x = torch.rand(n, c_in, side, side)
            w = torch.randn(c_out, c_in, 3, 3)
            w_plus = w.clamp(min=0)
            both = torch.cat([w, w_plus])
            two += best_time(
                lambda x=x, w=w, w_plus=w_plus: (
                    F.conv2d(x, w, None, 1, 1),
                    F.conv2d(x, w_plus, None, 1, 1),
                )
            )
            one += best_time(lambda x=x, both=both: F.conv2d(x, both, None, 1, 1))
        print(
            f"batch {n}: two convolutions {two:.3f} s, one stacked {one:.3f} s ({one / two:.2f}x)"
        )


if __name__ == "__main__":
    main()
