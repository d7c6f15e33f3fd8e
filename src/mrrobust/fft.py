"""Centred orthonormal 2-D FFTs and centre crops (fastMRI conventions).

k-space = fftshift(fft2(ifftshift(image), norm="ortho")) over the last two axes.
Works on torch tensors of any leading shape `(..., H, W)`; numpy arrays are
accepted and returned as numpy.
"""

from __future__ import annotations

import numpy as np
import torch

_DIMS = (-2, -1)


def _as_tensor(x):
    return (torch.from_numpy(np.ascontiguousarray(x)), True) if isinstance(x, np.ndarray) else (x, False)


def fft2c(image):
    """Image `(..., H, W)` complex -> centred orthonormal k-space `(..., H, W)` complex."""
    t, was_np = _as_tensor(image)
    if t.ndim < 2:
        raise ValueError(f"fft2c needs (..., H, W), got shape {tuple(t.shape)}")
    k = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(t, dim=_DIMS), dim=_DIMS, norm="ortho"), dim=_DIMS)
    return k.numpy() if was_np else k


def ifft2c(kspace):
    """Centred orthonormal k-space `(..., H, W)` complex -> image `(..., H, W)` complex."""
    t, was_np = _as_tensor(kspace)
    if t.ndim < 2:
        raise ValueError(f"ifft2c needs (..., H, W), got shape {tuple(t.shape)}")
    x = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(t, dim=_DIMS), dim=_DIMS, norm="ortho"), dim=_DIMS)
    return x.numpy() if was_np else x


def center_crop(x, shape: tuple[int, int]):
    """Crop the last two axes of `x` to `shape` (h, w), starting at `(N - n) // 2` (fastMRI)."""
    h, w = shape
    H, W = x.shape[-2], x.shape[-1]
    if h > H or w > W:
        raise ValueError(f"cannot crop {(H, W)} to {(h, w)}: crop larger than the input")
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top : top + h, left : left + w]
