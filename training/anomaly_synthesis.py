"""Synthetic defects for DiAD training, as DRAEM and DiffusionAD make them: the network learns to remove them.

Part of each training batch (``fraction``) gets one defect: a Perlin-noise region inside a random window of the
image is blended (opacity 0.5 to 1) with a foreign image, either a generated scene of
:mod:`training.generic_images` (the stand-in for DRAEM's texture photographs) or another image of the batch,
flipped and rotated (cut-and-paste). DiAD then learns to denoise the defective image towards the clean image's
latent (:meth:`training.models.diad.DiAD.training_loss`, ``corrupted``), so even at low noise the sample drops what
is not normal. Everything is drawn from one torch generator, so a run resumes bit-identically.

This is its own code: the defect generators of the demo set, the parts set and the photograph set (which the
evaluations score) are not used here.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from runtime.preprocess import preprocess
from training import generic_images

OPACITY = (0.5, 1.0)  # blend weight of the foreign image inside the defect
MASK_PATCH = 16  # side of a masked square (pixels): 2 x 2 latent cells of the f8 autoencoder
MASK_RATIO = (0.1, 0.5)  # share of an image's patches masked
WINDOW = (0.08, 0.25)  # radius of the window that holds the defect, as a fraction of the image side
THRESHOLD = (0.2, 0.5)  # Perlin values above this are defect
ATTEMPTS = 8


def perlin(size: int, cells: int, generator: torch.Generator) -> torch.Tensor:
    """2-D gradient (Perlin) noise ``(size, size)``, about ``cells`` features across, values in about [-1, 1]."""
    angles = torch.rand(cells + 1, cells + 1, generator=generator) * 2 * math.pi
    gradients = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    pos = torch.arange(size, dtype=torch.float32) * cells / size
    cell, frac = pos.long(), pos - pos.floor()
    fx, fy = frac[None, :], frac[:, None]
    ix, iy = cell[None, :], cell[:, None]

    def corner(dx: int, dy: int) -> torch.Tensor:
        g = gradients[iy + dy, ix + dx]
        return g[..., 0] * (fx - dx) + g[..., 1] * (fy - dy)

    fade = lambda t: t * t * t * (t * (t * 6 - 15) + 10)  # noqa: E731
    u, v = fade(fx), fade(fy)
    top = corner(0, 0) * (1 - u) + corner(1, 0) * u
    bottom = corner(0, 1) * (1 - u) + corner(1, 1) * u
    return (top * (1 - v) + bottom * v) * math.sqrt(2)


def uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def defect_mask(size: int, generator: torch.Generator) -> torch.Tensor:
    """One defect region ``(size, size)`` of 0/1: Perlin noise over a threshold, inside a random round window."""
    axis = torch.arange(size, dtype=torch.float32)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    for _ in range(ATTEMPTS):
        cells = 2 ** int(torch.randint(1, 4, (), generator=generator))
        noise = perlin(size, cells, generator)
        centre = torch.rand(2, generator=generator) * 0.7 * size + 0.15 * size
        radius = uniform(generator, *WINDOW) * size
        window = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2
        mask = (noise > uniform(generator, *THRESHOLD)) & window
        if mask.float().mean() >= 0.002:
            return mask.float()
    return window.float()


def foreign(images: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """The foreign image for batch row ``k``: a generated scene, or another row flipped and rotated."""
    size = images.shape[-1]
    if len(images) == 1 or torch.rand((), generator=generator) < 0.5:
        rng = np.random.default_rng(int(torch.randint(2**62, (), generator=generator)))
        return torch.from_numpy(preprocess(generic_images.render(rng, size), size)).to(images)
    other = (k + 1 + int(torch.randint(len(images) - 1, (), generator=generator))) % len(images)
    turns = int(torch.randint(4, (), generator=generator))
    return torch.rot90(images[other], turns, dims=(1, 2)).flip(-1)


def synthesize(
    images: torch.Tensor, generator: torch.Generator, fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet-normalised ``(B, 3, S, S)`` images with a defect in about ``fraction`` of them: the defective
    batch and a ``(B,)`` bool of the rows that got one (the other rows are returned unchanged)."""
    chosen = torch.rand(len(images), generator=generator) < fraction
    out = images.clone()
    for k in torch.nonzero(chosen).flatten().tolist():
        mask = defect_mask(images.shape[-1], generator).to(images) * uniform(generator, *OPACITY)
        out[k] = images[k] + mask * (foreign(images, k, generator) - images[k])
    return out, chosen.to(images.device)


def mask_patches(
    images: torch.Tensor, generator: torch.Generator, fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch masking (after OmiAD's masked training, here in pixels): in about ``fraction`` of the images, a random
    share (``MASK_RATIO``) of the ``MASK_PATCH`` squares is set to the ImageNet mean (0 after normalisation), so the
    denoiser has to fill them from their surroundings instead of copying. Returns the batch and the rows masked."""
    chosen = torch.rand(len(images), generator=generator) < fraction
    out = images.clone()
    cells = images.shape[-1] // MASK_PATCH
    for k in torch.nonzero(chosen).flatten().tolist():
        keep = torch.rand(cells, cells, generator=generator) >= uniform(generator, *MASK_RATIO)
        grid = keep.float().repeat_interleave(MASK_PATCH, 0).repeat_interleave(MASK_PATCH, 1).to(images)
        out[k] = images[k] * grid
    return out, chosen.to(images.device)
