"""Centred orthonormal 2-D FFTs and centre crops (fastMRI conventions).

k-space = fftshift(fft2(ifftshift(image), norm="ortho")) over the last two axes.
Works on torch tensors `(..., H, W)` (on their device) and on numpy arrays, which
stay numpy (numpy's shifts are much faster than torch's on the CPU).
"""

from __future__ import annotations

import numpy as np
import torch

_DIMS = (-2, -1)


def _check(x, name: str) -> None:
    if x.ndim < 2:
        raise ValueError(f"{name} needs (..., H, W), got shape {tuple(x.shape)}")


def fft2c(image):
    """Image `(..., H, W)` complex -> centred orthonormal k-space `(..., H, W)` complex."""
    _check(image, "fft2c")
    if isinstance(image, np.ndarray):
        return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=_DIMS), norm="ortho"), axes=_DIMS)
    k = torch.fft.fft2(torch.fft.ifftshift(image, dim=_DIMS), dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(k, dim=_DIMS)


def ifft2c(kspace):
    """Centred orthonormal k-space `(..., H, W)` complex -> image `(..., H, W)` complex."""
    _check(kspace, "ifft2c")
    if isinstance(kspace, np.ndarray):
        return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=_DIMS), norm="ortho"), axes=_DIMS)
    x = torch.fft.ifft2(torch.fft.ifftshift(kspace, dim=_DIMS), dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(x, dim=_DIMS)


def center_crop(x, shape: tuple[int, int]):
    """Crop the last two axes of `x` to `shape` (h, w), starting at `(N - n) // 2` (fastMRI)."""
    h, w = shape
    H, W = x.shape[-2], x.shape[-1]
    if h > H or w > W:
        raise ValueError(f"cannot crop {(H, W)} to {(h, w)}: crop larger than the input")
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top : top + h, left : left + w]


def ifft2c_cropped(kspace: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`center_crop(ifft2c(kspace), shape)` for numpy `(..., H, W)` k-space, about 1.3x faster.

    Separable: the readout-axis transform runs first and its rows are cropped before the
    phase-encode transform, so the second pass touches only `h / H` of the data.
    Uses scipy.fft, which keeps complex64 and is faster than numpy's shifts and FFTs.
    """
    import scipy.fft as sfft

    _check(kspace, "ifft2c_cropped")
    (h, w), (H, W) = shape, kspace.shape[-2:]
    if h > H or w > W:
        raise ValueError(f"cannot crop {(H, W)} to {(h, w)}: crop larger than the input")
    rows = sfft.fftshift(sfft.ifft(sfft.ifftshift(kspace, axes=-2), axis=-2, norm="ortho"), axes=-2)
    rows = rows[..., (H - h) // 2 : (H - h) // 2 + h, :]
    image = sfft.fftshift(sfft.ifft(sfft.ifftshift(rows, axes=-1), axis=-1, norm="ortho"), axes=-1)
    return np.ascontiguousarray(image[..., (W - w) // 2 : (W - w) // 2 + w])
