"""One slice under every artifact at severities 0..5, as one figure a person reads at a glance.

Rows are artifacts, columns severities; every panel shares the clean slice's
grey scale (0 .. its 99.5th percentile), so intensity changes stay visible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mrrobust.artifacts import SEVERITIES, SUITES, corrupt, lookup
from mrrobust.atomic import atomic_write
from mrrobust.errors import MrRobustError


def load_slice(data: Path, index: int | None = None) -> tuple[torch.Tensor, str]:
    """Complex `(H, W)` slice and its label from a STORE folder (`SliceDataset`, kind complex)
    or a fastMRI `.h5` volume (`read_volume` of that one slice + `complex_images`, crop the
    header's recon size when it is sane); default: the middle slice."""
    data = Path(data)
    if data.is_dir():
        from mrrobust.data.store import SliceDataset

        dataset = SliceDataset(data, kind="complex")
        count = len(dataset)
        k = count // 2 if index is None else index
        _check_index(k, count, data)
        image, _, slice_id = dataset[k]
        return torch.as_tensor(image), f"{slice_id}"
    if data.suffix.lower() in (".h5", ".hdf5") and data.is_file():
        from mrrobust.data.fastmri import complex_images, read_volume

        volume = read_volume(data, index="middle" if index is None else index)  # that one slice only
        crop = min(volume.recon_size) if volume.recon_size else min(320, *volume.kspace.shape[-2:])
        images = complex_images(volume.kspace, crop)
        return torch.from_numpy(np.ascontiguousarray(images[0])), f"{volume.name}:{volume.index}"
    raise MrRobustError(f"{data}: not a STORE folder nor a fastMRI .h5 file; pass --data STORE or --data FILE.h5")


def _check_index(k: int, count: int, data: Path) -> None:
    if not 0 <= k < count:
        raise MrRobustError(f"slice {k} is outside 0..{count - 1} in {data}; choose --slice in that range")


def gallery(image: torch.Tensor, out: Path, title: str = "", suite: str = "mrrobust", seed: int = 0,
            names: list[str] | None = None) -> Path:
    """Write the grid for one complex `(H, W)` slice to `out` (PNG/PDF/SVG by suffix), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(suite, str) or suite not in SUITES:
        raise MrRobustError(f"unknown artifact suite {suite!r}; choose one of {', '.join(SUITES)}")
    names = list(SUITES[suite]) if names is None else names
    for name in names:
        lookup(name, suite)
    out = Path(out)
    if not out.parent.is_dir():
        raise MrRobustError(f"folder {out.parent} does not exist (or is not a folder); create it or choose another --out")
    x = torch.as_tensor(image)[None]
    seeds = torch.tensor([seed])
    vmax = float(np.percentile(x.abs().numpy(), 99.5)) or 1.0
    fig, axes = plt.subplots(len(names), SEVERITIES + 1, figsize=(1.6 * (SEVERITIES + 1), 1.6 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        for severity in range(SEVERITIES + 1):
            ax = axes[row, severity]
            ax.imshow(corrupt(x, name, severity, seeds, suite=suite)[0].numpy(), cmap="gray", vmin=0, vmax=vmax)
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title("clean" if severity == 0 else f"severity {severity}", fontsize=8)
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(f"{title}  (suite {suite}; phase encoding left-right)", fontsize=9)
    fig.tight_layout()
    try:  # the format follows `out`'s suffix, not the temporary name's
        atomic_write(out, lambda temp: fig.savefig(temp, dpi=110, format=out.suffix.lstrip(".") or None))
    except ValueError as err:
        raise MrRobustError(f"cannot write {out}: {err}; use a .png, .pdf or .svg name") from None
    except OSError as err:
        raise MrRobustError(f"cannot write {out}: {err.strerror or err}; choose a writable --out") from None
    finally:
        plt.close(fig)
    return out
