"""FastNet: a small, fast-training CNN in the style of airbench94, tuned for CPU training.

Based on Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498
(code: github.com/KellerJordan/cifar10-airbench, ``airbench94.py``), which descends from
tysam-code's hlb-CIFAR10 and Page's "How to train your ResNet". The architecture is kept:

- a frozen 2x2 *patch-whitening* first convolution (no padding) whose filters are the
  eigenvectors of the covariance of 2x2 input patches, scaled by ``1/sqrt(eigenvalue + eps)``,
  in both signs (``2 * C * 4`` channels), set from training images by :meth:`init_from_data`;
  its bias is trainable;
- three conv groups ``conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU``, convolutions
  without bias and identity (Dirac) initialised on their first ``in_channels`` filters;
- BatchNorm without a learnable scale (the scale is fixed at one: only the shift is learned),
  ``eps=1e-12`` and fast running statistics (airbench's "momentum 0.6", i.e. PyTorch
  ``momentum=0.4``);
- a global max pool, a bias-free linear head and a fixed output scale of 1/9;
- optional test-time augmentation in eval mode (``tta=True``): logits averaged over the mirror
  image and, with ``tta_translate``, 1-pixel translations up-left / down-right (airbench's
  ``tta_level=2``, weights 1/2 for the untranslated pair, 1/4 for each translated pair).

What we changed for CPUs (where the 64/256/256 airbench94 net trains at ~300 img/s on two
cores):

- the widths are an argument and default to a narrower net (see ``DEFAULT_WIDTHS``), the widest
  that reaches 90% CIFAR-10 test accuracy within 15 minutes of 2-core CPU training;
- the head ends in a global (adaptive) max pool, so any input size works (28x28 MNIST, 32x32
  CIFAR, larger), and any number of input channels (1 or 3) and classes;
- the frozen parts are frozen structurally: the whitening filters and the BN scale are buffers,
  not parameters, so no optimiser or ``requires_grad_`` call can train them by accident;
- airbench trains BN shifts with a 64x larger learning rate than the rest (same weight decay
  per step). We keep that effect inside the model with a reparameterisation: each BN shift is
  stored as ``bias / bias_scale`` and multiplied by ``bias_scale`` (default 8) in the forward
  pass, which under SGD is exactly a ``bias_scale**2 = 64``-times learning rate, so one plain
  parameter group suffices (under Adam it is an 8x step size on those shifts).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.models.registry import Normalize, register_model

DEFAULT_WIDTHS = (64, 256, 256)


class FrozenScaleBatchNorm(nn.Module):
    """BatchNorm2d whose scale is fixed at one; only the shift is learned.

    The shift is stored as ``bias / bias_scale`` (see the module docstring). ``momentum`` is the
    PyTorch one (weight of the new batch in the running statistics).
    """

    def __init__(
        self, num_features: int, momentum: float = 0.4, eps: float = 1e-12, bias_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.momentum = momentum
        self.eps = eps
        self.bias_scale = float(bias_scale)
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.bias_scale if self.bias_scale != 1.0 else self.bias
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            None,
            bias,
            self.training,
            self.momentum,
            self.eps,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, momentum={self.momentum}, eps={self.eps}, "
            f"bias_scale={self.bias_scale}"
        )


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(cin, cout)])  # an implicit residual at initialisation
    return conv


class ConvGroup(nn.Module):
    """conv -> maxpool2 -> BN -> GELU -> conv -> BN -> GELU."""

    def __init__(self, cin: int, cout: int, bn_momentum: float, bias_scale: float) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = FrozenScaleBatchNorm(cout, bn_momentum, bias_scale=bias_scale)
        self.conv2 = _conv3x3(cout, cout)
        self.norm2 = FrozenScaleBatchNorm(cout, bn_momentum, bias_scale=bias_scale)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class FastNet(nn.Module):
    """Normalize -> frozen 2x2 whitening conv -> GELU -> 3 conv groups -> max pool -> linear/9."""

    #: the blocks whose outputs defenses tap (:mod:`unbackdoor.models.taps`)
    feature_layers = ("group1", "group2", "group3")

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        input_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        widths: Sequence[int] = DEFAULT_WIDTHS,
        whiten_kernel: int = 2,
        bn_momentum: float = 0.4,
        bias_scale: float = 8.0,
        head_scale: float = 1 / 9,
        tta: bool = False,
        tta_translate: bool = True,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"widths must be three positive ints, got {widths}")
        h, w = (int(s) for s in input_size)
        if min(h, w) - whiten_kernel + 1 < 8:
            raise ValueError(f"input_size {tuple(input_size)} is too small for three 2x poolings")
        self.normalize = Normalize(mean, std)
        k = int(whiten_kernel)
        self.whiten_width = 2 * in_channels * k * k
        # Frozen filters (a buffer), trainable bias.
        init_w = torch.empty(self.whiten_width, in_channels, k, k)
        nn.init.kaiming_uniform_(init_w, a=5**0.5)
        self.register_buffer("whiten_weight", init_w)
        self.whiten_bias = nn.Parameter(torch.zeros(self.whiten_width))
        self.act = nn.GELU()
        self.group1 = ConvGroup(self.whiten_width, widths[0], bn_momentum, bias_scale)
        self.group2 = ConvGroup(widths[0], widths[1], bn_momentum, bias_scale)
        self.group3 = ConvGroup(widths[1], widths[2], bn_momentum, bias_scale)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.head_scale = float(head_scale)
        self.tta = bool(tta)
        self.tta_translate = bool(tta_translate)
        self.whiten_fp32 = True

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters from a float ``[0, 1]`` batch (e.g. 5,000 training images)."""
        x = self.normalize(images.to(self.whiten_weight.device, torch.float32))
        c = x.shape[1]
        k = self.whiten_weight.shape[-1]
        patches = x.unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * k * k)
        patches = patches.double()
        cov = patches.T @ patches / patches.shape[0]
        evals, evecs = torch.linalg.eigh(cov)
        evals, evecs = evals.flip(0), evecs.flip(1)  # largest first
        filters = (evecs.T / torch.sqrt(evals.clamp_min(0) + eps)[:, None]).reshape(-1, c, k, k)
        self.whiten_weight.copy_(torch.cat([filters, -filters]).float())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # The whitening filters for the smallest eigenvalues are large (norm ~40) and take
        # differences of neighbouring pixels; in bfloat16 their output carries ~15% rounding
        # noise, so this cheap layer always runs in float32, also under autocast.
        with torch.autocast(x.device.type, enabled=not self.whiten_fp32):
            x = self.normalize(x.float() if self.whiten_fp32 else x)
            x = F.conv2d(x, self.whiten_weight.to(x.dtype), self.whiten_bias.to(x.dtype))
            x = self.act(x)
        x = self.group3(self.group2(self.group1(x)))
        return self.pool(x).flatten(1)

    whiten_bias_epochs: int = 3

    def on_train_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the training loop: airbench trains the whitening bias for 3 epochs only."""
        self.whiten_bias.requires_grad_(epoch < self.whiten_bias_epochs)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """airbench decays every trained parameter (BN shifts included), in one group."""
        return [
            {
                "params": [
                    p for p in self.parameters() if p.requires_grad or p is self.whiten_bias
                ],
                "weight_decay": weight_decay,
            }
        ]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) * self.head_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.tta:
            return self.logits(x)
        # Test-time augmentation: mirror, plus 1-pixel translations up-left and down-right.
        out = 0.5 * (self.logits(x) + self.logits(x.flip(-1)))
        if not self.tta_translate:
            return out
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = 0.0
        for dy, dx in ((0, 0), (2, 2)):
            xs = padded[..., dy : dy + h, dx : dx + w]
            shifted = shifted + 0.25 * (self.logits(xs) + self.logits(xs.flip(-1)))
        return 0.5 * out + 0.5 * shifted


@register_model(
    "fastnet",
    "airbench94-style CNN (frozen patch whitening, 3 conv groups); ~90% CIFAR-10 in 15 CPU-min.",
)
def fastnet(
    num_classes: int,
    in_channels: int,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    widths: Sequence[int] = DEFAULT_WIDTHS,
    whiten_kernel: int = 2,
    bn_momentum: float = 0.4,
    bias_scale: float = 8.0,
    head_scale: float = 1 / 9,
    tta: bool = False,
    tta_translate: bool = True,
) -> nn.Module:
    """Build a :class:`FastNet`; call ``model.init_from_data(images)`` before training."""
    return FastNet(
        num_classes,
        in_channels,
        input_size,
        mean,
        std,
        widths=widths,
        whiten_kernel=whiten_kernel,
        bn_momentum=bn_momentum,
        bias_scale=bias_scale,
        head_scale=head_scale,
        tta=tta,
        tta_translate=tta_translate,
    )
