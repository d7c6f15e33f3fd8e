"""mrrobust.data.fastmri: reading volumes, complex images, coil combination, bad input."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import fastmri
from fastmri.data import transforms as T
from mrrobust.data.fastmri import complex_images, read_volume, recon_size_from_header
from mrrobust.data.synth import synth
from mrrobust.errors import MrRobustError
from mrrobust.fft import fft2c

CROP = 64


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synth(root, volumes=3, slices=4, crop=CROP, seed=3)
    synth(root, volumes=3, slices=4, crop=CROP, seed=3, multicoil=True, coils=6)
    return root


def _first(root, challenge):
    return sorted((root / "knee").glob(f"{challenge}_*/*.h5"))[0]


def test_single_coil_volume_matches_stored_reconstruction(synth_root):
    path = _first(synth_root, "singlecoil")
    vol = read_volume(path)
    assert vol.name == path.stem and vol.kspace.dtype == np.complex64 and vol.kspace.shape[:2] == (4, 2 * CROP)
    assert vol.recon_size == (CROP, CROP)
    assert vol.attrs["acquisition"] in ("CORPD_FBK", "CORPDFS_FBK") and isinstance(vol.attrs["patient_id"], str)
    images = complex_images(vol.kspace, CROP)
    assert images.shape == (4, CROP, CROP) and images.dtype == np.complex64
    with h5py.File(path) as hf:
        esc = hf["reconstruction_esc"][()]
    np.testing.assert_allclose(np.abs(images), esc, rtol=1e-5, atol=1e-6 * esc.max())
    assert vol.attrs["max"] == pytest.approx(float(esc.max()))


def test_multi_coil_combination_close_to_reference_rss(synth_root):
    path = _first(synth_root, "multicoil")
    vol = read_volume(path)
    assert vol.multicoil and vol.kspace.shape[:3] == (4, 6, 2 * CROP)
    combined = np.abs(complex_images(vol.kspace, CROP))
    # RSS by the fastMRI reference functions, independent of our FFT
    coil_images = fastmri.ifft2c(T.to_tensor(vol.kspace))
    rss = fastmri.rss(fastmri.complex_abs(T.complex_center_crop(coil_images, (CROP, CROP))), dim=1).numpy()
    with h5py.File(path) as hf:
        np.testing.assert_allclose(rss, hf["reconstruction_rss"][()], rtol=1e-4, atol=1e-6 * rss.max())
    tissue = rss > 0.2 * rss.max()
    relative = np.abs(combined - rss)[tissue] / rss[tissue]
    assert np.median(relative) < 0.03 and np.percentile(relative, 95) < 0.15
    assert np.corrcoef(combined.ravel(), rss.ravel())[0, 1] > 0.99


def test_coil_combination_recovers_object_magnitude_on_a_phantom():
    """Known smooth sensitivities: the combination equals |object| * sqrt(sum |s_c|^2), like RSS."""
    h, w = 96, 80
    y, x = np.mgrid[:h, :w] / np.array([h, w])[:, None, None]
    obj = ((y - 0.5) ** 2 / 0.12 + (x - 0.5) ** 2 / 0.1 < 1) * (1 + 0.5 * np.sin(9 * x)) * np.exp(1j * 2 * x)
    sens = np.stack([np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 0.3) * np.exp(1j * (cx - cy)) for cy, cx in
                     [(0, 0), (0, 1), (1, 0), (1, 1)]])
    kspace = fft2c((sens * obj).astype(np.complex64))[None]
    combined = np.abs(complex_images(kspace, 64)[0])
    truth = (np.abs(obj) * np.sqrt((np.abs(sens) ** 2).sum(0)))[16:80, 8:72]
    inside = truth > 0.3 * truth.max()
    assert np.abs(combined - truth)[inside].max() < 0.05 * truth.max()


def test_coil_combination_inside_the_crop_equals_the_crop_of_the_full_combination(synth_root):
    from mrrobust.data.fastmri import coil_combine
    from mrrobust.fft import center_crop

    coil_kspace = read_volume(_first(synth_root, "multicoil")).kspace[1]
    full = coil_combine(coil_kspace)
    assert full.shape == coil_kspace.shape[-2:]
    cropped = coil_combine(coil_kspace, (CROP, CROP))
    reference = center_crop(full, (CROP, CROP))
    np.testing.assert_allclose(cropped, reference, atol=1e-4 * np.abs(reference).max())


def test_missing_header_falls_back_to_none(tmp_path):
    path = tmp_path / "file1.h5"
    with h5py.File(path, "w") as hf:
        hf["kspace"] = np.ones((2, 8, 8), np.complex64)
    vol = read_volume(path)
    assert vol.recon_size is None and vol.attrs["acquisition"] is None
    assert recon_size_from_header(b"<not xml") is None
    assert recon_size_from_header(b'<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"/>') is None


def test_double_precision_kspace_is_read_as_complex64(tmp_path):
    path = tmp_path / "file2.h5"
    values = (np.arange(2 * 8 * 6).reshape(2, 8, 6) * (1 + 0.5j)).astype(np.complex128)
    with h5py.File(path, "w") as hf:
        hf["kspace"] = values
    kspace = read_volume(path).kspace
    assert kspace.dtype == np.complex64
    np.testing.assert_array_equal(kspace, values.astype(np.complex64))


def test_crop_larger_than_matrix_is_a_user_error():
    with pytest.raises(MrRobustError, match="crop 64"):
        complex_images(np.ones((1, 32, 40), np.complex64), 64)


def _write(path, **datasets):
    with h5py.File(path, "w") as hf:
        for name, data in datasets.items():
            hf[name] = data
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"this is not an HDF5 file\n" * 10), "not a readable HDF5"),
        (lambda p: _write(p, reconstruction_esc=np.ones((2, 4, 4), np.float32)), "no 'kspace'"),
        (lambda p: _write(p, kspace=np.ones((8, 8), np.complex64)), "must be complex"),
        (lambda p: _write(p, kspace=np.ones((1, 2, 3, 4, 5), np.complex64)), "must be complex"),
        (lambda p: _write(p, kspace=np.ones((2, 8, 8), np.float32)), "must be complex"),
        (lambda p: _write(p, kspace=np.full((2, 8, 8), np.nan, np.complex64)), "NaN/Inf"),
        (lambda p: _write(p, kspace=np.array([[[1, np.inf]]], np.complex64)), "NaN/Inf"),
    ],
    ids=["not-hdf5", "no-kspace", "rank-2", "rank-5", "real", "nan", "inf"],
)
def test_bad_files_raise_one_line_naming_the_file(tmp_path, make, message):
    path = tmp_path / "file1000000.h5"
    make(path)
    with pytest.raises(MrRobustError, match=message) as err:
        read_volume(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_file(tmp_path, synth_root):
    data = _first(synth_root, "singlecoil").read_bytes()
    for keep in (len(data) // 2, 1000):
        path = tmp_path / f"cut{keep}.h5"
        path.write_bytes(data[:keep])
        with pytest.raises(MrRobustError, match="truncated") as err:
            read_volume(path)
        assert str(path) in str(err.value)


def test_torch_and_reference_agree_on_the_single_coil_image(synth_root):
    vol = read_volume(_first(synth_root, "singlecoil"))
    ref = T.complex_center_crop(fastmri.ifft2c(T.to_tensor(vol.kspace)), (CROP, CROP))
    ours = torch.view_as_real(torch.from_numpy(complex_images(vol.kspace, CROP)))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
