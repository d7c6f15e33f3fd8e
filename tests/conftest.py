"""Shared fixtures: one tiny synthetic fastMRI set and the STORE `prepare` makes from it."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = {"volumes": 24, "slices": 12, "crop": 64, "seed": 0}


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """`synth` output (crop 64, 24 volumes x 12 slices, seed 0): `knee/singlecoil_{train,val}/`, `annotations/`."""
    from mrrobust.data.synth import synth

    out = tmp_path_factory.mktemp("synth")
    synth(out, volumes=TINY["volumes"], slices=TINY["slices"], crop=TINY["crop"], seed=TINY["seed"])
    return out


@pytest.fixture(scope="session")
def tiny_store(synth_root, tmp_path_factory) -> Path:
    """A finished STORE prepared from `synth_root` (crop 64, seed 0, 70/15/15). Read it, never write it."""
    from mrrobust.data.prepare import prepare

    store = tmp_path_factory.mktemp("tiny_store") / "store"
    prepare(synth_root / "knee", store, annotations=synth_root / "annotations", crop=TINY["crop"], seed=0, progress=False)
    return store



@pytest.fixture(scope="session", autouse=True)
def cli_command_built_once():
    """typer rebuilds the click command of `mrrobust.cli.app` from every command's signature on
    each call (about 0.1 s, two thirds of an in-process refusal); the tests call the CLI some
    thousand times in this process, so build it once (the same command every call builds)."""
    import typer.main

    from mrrobust.cli import app

    build, built = typer.main.get_command, []

    def get_command(typer_instance):
        if typer_instance is not app:
            return build(typer_instance)
        if not built:
            built.append(build(app))
        return built[0]

    patch = pytest.MonkeyPatch()
    patch.setattr(typer.main, "get_command", get_command)
    yield
    patch.undo()


@pytest.fixture(scope="session")
def tiny_runs(tiny_store, tmp_path_factory) -> dict[str, Path]:
    """Finished RUNs `batch-seed0` and `layer-seed0` on `tiny_store` (width 8, 4 groups, one epoch,
    batch 32, lr 1e-3, CPU), by norm. Read them, never write them (copy one to change it)."""
    from mrrobust.training import train

    root = tmp_path_factory.mktemp("tiny_runs")
    for norm in ("batch", "layer"):
        train(tiny_store, root / f"{norm}-seed0", norm, width=8, groups=4, max_epochs=1, batch_size=32, workers=0,
              accelerator="cpu", quiet=True, lr=1e-3)
    return {norm: root / f"{norm}-seed0" for norm in ("batch", "layer")}
