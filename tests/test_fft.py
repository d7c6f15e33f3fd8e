"""Centred orthonormal FFTs: Parseval, round trip, numpy/torch agreement, the cropped inverse."""

import numpy as np
import pytest
import torch

from mrrobust.fft import center_crop, fft2c, ifft2c, ifft2c_cropped


def _complex(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def test_parseval_and_round_trip():
    x = _complex((2, 24, 18))
    k = fft2c(x)
    assert k.dtype == np.complex64
    np.testing.assert_allclose(np.sum(np.abs(k) ** 2), np.sum(np.abs(x) ** 2), rtol=1e-5)
    np.testing.assert_allclose(ifft2c(k), x, atol=1e-5)


def test_centre_of_kspace_is_the_mean_of_the_image():
    x = _complex((16, 12))
    k = fft2c(x)  # DC at (N // 2, M // 2) for the centred transform
    np.testing.assert_allclose(k[8, 6], x.sum() / np.sqrt(x.size), rtol=1e-5)


def test_numpy_and_torch_agree():
    x = _complex((3, 20, 14))
    np.testing.assert_allclose(fft2c(torch.from_numpy(x)).numpy(), fft2c(x), atol=1e-5)
    np.testing.assert_allclose(ifft2c(torch.from_numpy(x)).numpy(), ifft2c(x), atol=1e-5)


@pytest.mark.parametrize("H, W, h, w", [(640, 368, 320, 320), (640, 372, 320, 320), (20, 14, 10, 8), (21, 15, 10, 9),
                                        (20, 14, 9, 7), (21, 15, 21, 15), (9, 8, 9, 8), (8, 9, 1, 1)])
def test_cropped_inverse_equals_crop_of_inverse(H, W, h, w):
    k = _complex((2, H, W), seed=H)
    reference = center_crop(ifft2c(k.astype(np.complex128)), (h, w))  # double precision, shifts done in full
    out = ifft2c_cropped(k, (h, w))
    assert out.shape == (2, h, w) and out.dtype == np.complex64 and out.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(out, reference, atol=1e-5 * np.abs(reference).max())


def test_cropped_inverse_keeps_leading_axes():
    k = _complex((2, 3, 12, 10))
    np.testing.assert_allclose(ifft2c_cropped(k, (6, 4)), center_crop(ifft2c(k), (6, 4)), atol=1e-5)


def test_crop_larger_than_input_is_refused():
    with pytest.raises(ValueError, match="crop larger"):
        ifft2c_cropped(_complex((4, 4)), (5, 4))
