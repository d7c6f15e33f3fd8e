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
    """`center_crop(ifft2c(kspace), shape)` for numpy `(..., H, W)` k-space, without the shifts.

    Separable: the readout-axis transform runs first and its rows are cropped before the
    phase-encode transform. The output fftshift is folded into the crop's indices and, for
    an even length, the input ifftshift into a (-1)^index sign on the kept outputs, so no
    full-size shifted copy is made. scipy.fft keeps complex64.
    """
    _check(kspace, "ifft2c_cropped")
    (h, w), (H, W) = shape, kspace.shape[-2:]
    if h > H or w > W:
        raise ValueError(f"cannot crop {(H, W)} to {(h, w)}: crop larger than the input")
    return np.ascontiguousarray(_centred_ifft_crop(_centred_ifft_crop(kspace, -2, h), -1, w))


def _centred_ifft_crop(x: np.ndarray, axis: int, n: int) -> np.ndarray:
    """The central `n` samples of `fftshift(ifft(ifftshift(x)))` along `axis` (orthonormal)."""
    import scipy.fft as sfft

    N = x.shape[axis]
    if N % 2:  # odd length: the input shift is not a sign flip
        x = sfft.ifftshift(x, axes=axis)
    index = (np.arange((N - n) // 2, (N - n) // 2 + n) - N // 2) % N  # fftshift folded in
    out = np.take(sfft.ifft(x, axis=axis, norm="ortho"), index, axis=axis)
    if N % 2 == 0:
        sign = np.where(index % 2 == 0, 1, -1).astype(out.real.dtype)
        out *= sign.reshape([n if a == axis % x.ndim else 1 for a in range(x.ndim)])
    return out
