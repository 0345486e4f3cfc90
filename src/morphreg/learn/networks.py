"""Network layers for learned registration, 2D and 3D: each does one job in a screenful.

Shapes: images (N, C, *spatial) with spatial (D, H, W) or (H, W); every layer takes either.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def conv(dim: int, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, dilation: int = 1) -> nn.Module:
    """A 'same'-padded convolution of the right dimension."""
    cls = nn.Conv2d if dim == 2 else nn.Conv3d
    return cls(in_channels, out_channels, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation)


class ConvBlock(nn.Module):
    """conv -> LeakyReLU(0.2), optionally strided (stride 2 halves each axis)."""

    def __init__(self, dim: int, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv = conv(dim, in_channels, out_channels, stride=stride)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class UNet(nn.Module):
    """VoxelMorph-style U-Net: strided encoder ``encoder`` channels, decoder with skip connections.

    The input's spatial size must divide by 2 ** len(encoder) (the model grid is chosen so; see
    :class:`morphreg.learn.model.ModelSpace`). Output: (N, decoder[-1], *spatial).
    """

    def __init__(self, dim: int, in_channels: int, encoder=(16, 32, 32, 32), decoder=(32, 32, 32, 16)):
        super().__init__()
        if len(decoder) < len(encoder):
            raise ValueError("the decoder needs at least as many levels as the encoder")
        self.levels = len(encoder)
        self.down = nn.ModuleList()
        channels, skips = in_channels, [in_channels]
        for width in encoder:
            self.down.append(ConvBlock(dim, channels, width, stride=2))
            channels = width
            skips.append(width)
        skips.pop()  # the deepest output is not a skip
        self.up = nn.ModuleList()
        for i, width in enumerate(decoder):
            skip = skips.pop() if i < self.levels else 0
            self.up.append(ConvBlock(dim, channels + skip, width))
            channels = width
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for block in self.down:
            features.append(block(features[-1]))
        y = features.pop()
        for i, block in enumerate(self.up):
            if i < self.levels:
                y = F.interpolate(y, scale_factor=2, mode="nearest")
                y = torch.cat([y, features.pop()], dim=1)
            y = block(y)
        return y


class FieldHead(nn.Module):
    """Features -> a (N, dim, *spatial) field in mm: a convolution with small initial weights (the
    network starts near the identity) times ``scale_mm``, so the layer works in a unit range."""

    def __init__(self, dim: int, in_channels: int, scale_mm: float = 1.0):
        super().__init__()
        self.conv = conv(dim, in_channels, dim)
        nn.init.normal_(self.conv.weight, std=1e-5)
        nn.init.zeros_(self.conv.bias)
        self.scale_mm = float(scale_mm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale_mm


class AffineHead(nn.Module):
    """(fixed, moving) -> an affine map about the grid centre: strided convolutions, global average
    pooling, one linear layer to the dim x dim matrix and the shift (mm). Zero-initialised: the
    identity at the start (DLIR / the lung-MRI network's linear branch)."""

    def __init__(self, dim: int, in_channels: int, encoder=(16, 32, 32, 32), shift_scale_mm: float = 10.0):
        super().__init__()
        blocks, channels = [], in_channels
        for width in encoder:
            blocks.append(ConvBlock(dim, channels, width, stride=2))
            channels = width
        self.encoder = nn.Sequential(*blocks)
        self.linear = nn.Linear(channels, dim * dim + dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.dim, self.shift_scale_mm = dim, float(shift_scale_mm)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, *spatial) -> matrix (N, dim, dim), shift (N, dim) mm."""
        pooled = self.encoder(x).flatten(2).mean(-1)
        params = self.linear(pooled)
        d = self.dim
        matrix = torch.eye(d, dtype=x.dtype, device=x.device) + params[:, : d * d].view(-1, d, d)
        return matrix, params[:, d * d:] * self.shift_scale_mm
