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


def average_pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, C, *shape) averaged over ``factor`` points per axis (2D or 3D): (N, C, *shape / factor)."""
    return (F.avg_pool2d if x.dim() == 4 else F.avg_pool3d)(x, factor)


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
    identity at the start (DLIR / the lung-MRI network's linear branch). ``rigid``: the matrix is the
    exponential of the skew-symmetric part of the dim x dim outputs, a rotation (for rigid training
    with the transformed-grid distance)."""

    def __init__(self, dim: int, in_channels: int, encoder=(16, 32, 32, 32), shift_scale_mm: float = 10.0,
                 rigid: bool = False):
        super().__init__()
        blocks, channels = [], in_channels
        for width in encoder:
            blocks.append(ConvBlock(dim, channels, width, stride=2))
            channels = width
        self.encoder = nn.Sequential(*blocks)
        self.linear = nn.Linear(channels, dim * dim + dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.dim, self.shift_scale_mm, self.rigid = dim, float(shift_scale_mm), bool(rigid)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, *spatial) -> matrix (N, dim, dim), shift (N, dim) mm."""
        pooled = self.encoder(x).flatten(2).mean(-1)
        params = self.linear(pooled)
        d = self.dim
        p = params[:, : d * d].view(-1, d, d)
        if self.rigid:
            matrix = torch.linalg.matrix_exp((p - p.transpose(1, 2)) / 2)
        else:
            matrix = torch.eye(d, dtype=x.dtype, device=x.device) + p
        return matrix, params[:, d * d:] * self.shift_scale_mm


class KeypointHead(nn.Module):
    """(fixed, moving) -> a translation or an affine map from corresponding keypoints (the KeyMorph idea):
    one U-Net per image (the two may differ in modality) gives ``keypoints`` maps, and each map's mean
    position is a keypoint (mm). ``maps``: "softmax" (a softmax over space makes each map a distribution:
    the keypoints are free, learned only through the registration loss) or "segmentation" (each map is a
    sigmoid probability, its keypoint the probability-weighted centroid; the first map can be supervised
    as a segmentation of each image: the two-step design "segment the gland in both images, align the
    segmentations" in one network). :meth:`forward` keeps both images' map logits in ``last_logits`` for the
    training loss (they are part of the autograd graph of the same call). ``fit``: "translation" (mean of q_k - p_k) or "affine" (least
    squares, needs keypoints >= dim + 1). The maps are computed on the images averaged over 2 voxels per
    axis (a quarter / eighth of the work; the centroids stay sub-voxel).
    Why: a CNN with global average pooling (:class:`AffineHead`) barely sees *where* things are, and on the
    prostate pairs most of the error is the gland's position."""

    def __init__(self, dim: int, points: torch.Tensor, keypoints: int = 4, encoder=(16, 32, 32),
                 decoder=(32, 32, 32, 16), fit: str = "translation", maps: str = "softmax"):
        super().__init__()
        self.dim, self.fit, self.maps = dim, fit, maps
        self.nets = nn.ModuleList(nn.Sequential(UNet(dim, 1, encoder, decoder), conv(dim, decoder[-1], keypoints))
                                  for _ in range(2))
        coarse = average_pool(torch.movedim(points, -1, 0).unsqueeze(0), 2)[0]  # (dim, *coarse shape) mm
        self.register_buffer("points", coarse.flatten(1).T.contiguous(), persistent=False)  # (P, dim)
        self.last_logits: tuple[torch.Tensor, torch.Tensor] | None = None

    def keypoints(self, image: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, *shape) -> (keypoints (N, K, dim) mm on the canonical grid, the maps' logits (N, K, *shape / 2):
        of softmax weights or of segmentation probabilities)."""
        logits = self.nets[side](average_pool(image, 2))
        if self.maps == "segmentation":
            return self.centroids(torch.sigmoid(logits)), logits
        return torch.softmax(logits.flatten(2), dim=-1) @ self.points, logits

    def centroids(self, weights: torch.Tensor) -> torch.Tensor:
        """(N, K, *shape / 2) non-negative weights on the maps' grid -> their weighted centroids (N, K, dim) mm.
        An all-but-empty map's centroid is still its weighted mean, not NaN."""
        flat = weights.flatten(2)
        return flat @ self.points / flat.sum(-1, keepdim=True).clamp_min(1e-6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 2, *shape) fixed and moving -> matrix (N, dim, dim), shift (N, dim) mm: y = A x + t maps the
        fixed keypoints onto the moving ones. Keeps the map logits of both images in ``last_logits`` (for a loss)."""
        (p, fixed_logits), (q, moving_logits) = self.keypoints(x[:, :1], 0), self.keypoints(x[:, 1:], 1)
        self.last_logits = (fixed_logits, moving_logits)
        n, eye = x.shape[0], torch.eye(self.dim, dtype=x.dtype, device=x.device)
        if self.fit == "translation":
            return eye.expand(n, -1, -1), (q - p).mean(1)
        ones = torch.ones(*p.shape[:2], 1, dtype=x.dtype, device=x.device)
        design = torch.cat([p, ones], -1)  # (N, K, dim + 1); a small ridge keeps near-degenerate sets stable
        gram = design.transpose(1, 2) @ design + 1e-3 * torch.eye(self.dim + 1, dtype=x.dtype, device=x.device)
        w = torch.linalg.solve(gram, design.transpose(1, 2) @ q)  # (N, dim + 1, dim)
        return w[:, :-1].transpose(1, 2), w[:, -1]


class DilatedEncoder(nn.Module):
    """The lung-MRI network's encoder (Stergios et al., 2018): 3x3(x3) convolutions with dilations
    1, 1, 2, 3, 5, each with instance norm and LeakyReLU, applied in sequence; the outputs of all five are
    concatenated (N, 5 * width, *spatial). Full resolution throughout: any input size."""

    def __init__(self, dim: int, in_channels: int, width: int = 16, dilations=(1, 1, 2, 3, 5)):
        super().__init__()
        norm = nn.InstanceNorm2d if dim == 2 else nn.InstanceNorm3d
        self.layers = nn.ModuleList()
        channels = in_channels
        for d in dilations:
            self.layers.append(nn.Sequential(conv(dim, channels, width, dilation=d), norm(width), nn.LeakyReLU(0.2)))
            channels = width
        self.out_channels = width * len(dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for layer in self.layers:
            x = layer(x)
            outputs.append(x)
        return torch.cat(outputs, dim=1)


class SqueezeExcitation(nn.Module):
    """Channel attention: global pooling -> two linear layers -> sigmoid weights per channel."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, max(1, channels // reduction)), nn.ReLU(),
                                nn.Linear(max(1, channels // reduction), channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.fc(x.flatten(2).mean(-1))
        return x * weights.view(*weights.shape, *[1] * (x.dim() - 2))


class GradientHead(nn.Module):
    """Features -> per-axis spatial gradients g in [0.001, 2) of the sampling grid (2 * sigmoid; 1 = identity
    at the start). Integrated along each axis (:func:`integrate_gradients`) they give a grid whose lines
    never fold back along their own axis."""

    def __init__(self, dim: int, in_channels: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(SqueezeExcitation(in_channels), conv(dim, in_channels, width), nn.LeakyReLU(0.2),
                                  conv(dim, width, dim))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A saturated sigmoid is exactly 0 in float32: grid points would merge. Steps stay >= 1e-3.
        return (2 * torch.sigmoid(self.body(x))).clamp_min(1e-3)


def integrate_gradients(gradients: torch.Tensor, spacing) -> torch.Tensor:
    """Displacement (N, dim, *spatial) mm of the grid whose index steps along axis d are ``gradients[:, d]``
    (channels x, y[, z]; spatial axes reversed, as tensors are): u_d = spacing_d * (cumsum_d(g_d) - 1 - i_d).
    g = 1 everywhere is the identity; the first point of each line is its anchor."""
    dim = gradients.shape[1]
    out = []
    for d in range(dim):
        axis = 2 + (dim - 1 - d)  # channel x runs along the last tensor axis
        g = gradients[:, d]
        index = torch.arange(g.shape[axis - 1], dtype=g.dtype, device=g.device)
        index = index.view(*[1] * (axis - 1), -1, *[1] * (g.dim() - axis))
        out.append(float(spacing[d]) * (torch.cumsum(g, dim=axis - 1) - 1 - index))
    return torch.stack(out, dim=1)


def grid_gradients(displacement: torch.Tensor, spacing) -> torch.Tensor:
    """The inverse of :func:`integrate_gradients`: per-axis index steps g (N, dim, *spatial) of the grid of a
    displacement (1 = identity); for the lung-MRI network's |g - 1| term."""
    dim = displacement.shape[1]
    out = []
    for d in range(dim):
        axis = 1 + (dim - 1 - d)  # the tensor axis of channel d once the channel axis is dropped
        steps = torch.diff(displacement[:, d] / float(spacing[d]), dim=axis, prepend=torch.zeros_like(
            displacement[:, d].narrow(axis, 0, 1)))
        out.append(steps + 1)
    return torch.stack(out, dim=1)
