"""The demo runs the whole pipeline end to end, small, resumes without redoing work, and refuses
bad arguments before writing anything."""

import json

import pytest

from mrrobust.demo import DEMO_ARTIFACTS, DEMO_NORMS, _claim, _clean_aucs, check_demo, demo
from mrrobust.errors import MrRobustError

from commands import call_cli, cli_command, kill_then_resume, torch_threads


# one small demo, as `mrrobust demo` with these arguments; two epochs, so that a demo killed
# after epoch 0's checkpoint still has training to do
SMALL = ["--volumes", "12", "--slices", "6", "--epochs", "2", "--seeds", "0", "--bootstrap", "20", "--quiet"]
# what a killed and resumed demo must give byte for byte
COMPARED = [*(f"runs/{norm}-seed0/model.safetensors" for norm in DEMO_NORMS), "results/results.csv",
            "results/arms.csv", "results/arm_comparisons.csv", "store/slices.csv"]


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory):
    """(OUT, the bytes of COMPARED) of a finished small demo, run through the CLI in this process
    at one torch thread, as a CLI process under OMP_NUM_THREADS=1 runs it."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    with torch_threads(1):
        code, _, err = call_cli("demo", "--out", out, *SMALL)
    assert code == 0, err
    return out, {name: (out / name).read_bytes() for name in COMPARED}


def test_demo_end_to_end_and_resume(finished_demo):
    out, _ = finished_demo
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {f"{norm}-seed0" for norm in DEMO_NORMS}
    for name, best in summary["runs"].items():
        assert best["epoch"] in ("0", "1") and 0.0 <= float(best["val_auc_mean"]) <= 1.0
        assert len((out / "runs" / name / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs
        assert (out / "runs" / name / "model.safetensors").is_file()
    assert (out / "gallery.png").stat().st_size > 10_000
    results = out / "results" / "results.csv"
    header = results.read_text().splitlines()[0].split(",")
    artifacts = {line.split(",")[header.index("artifact")] for line in results.read_text().splitlines()[1:]}
    assert artifacts == {"clean", *DEMO_ARTIFACTS}
    assert set(summary["clean_test_auc"]) == set(summary["runs"])
    assert all(auc is None or 0.0 <= auc <= 1.0 for auc in summary["clean_test_auc"].values())
    assert (out / "report" / "report.md").read_text().strip()
    stages = summary["stages"]
    assert {"synth", "prepare", "benchmark (train, evaluate, report)", "gallery", "total"} <= set(stages)
    assert stages["total"] >= sum(v for k, v in stages.items() if k not in ("total", "cpu (this process)")) - 0.5

    stamps = {p: p.stat().st_mtime_ns for p in [*out.rglob("*.safetensors"), *out.rglob("*.npy"), *out.rglob("*.h5")]}
    again = demo(out, volumes=12, slices=6, epochs=2, seeds=(0,), bootstrap=20, progress=False)
    # every step finished: nothing is synthesised, trained or predicted again
    assert {p: p.stat().st_mtime_ns for p in [*out.rglob("*.safetensors"), *out.rglob("*.npy"),
                                              *out.rglob("*.h5")]} == stamps
    assert again["runs"] == summary["runs"] and again["clean_test_auc"] == summary["clean_test_auc"]
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(again))


def test_clean_aucs_read_the_clean_mean_auc_of_each_run(tmp_path):
    (tmp_path / "results.csv").write_text(
        "run,norm,seed,bn_mode,artifact,severity,label,metric,value,ci_low,ci_high\n"
        "batch-seed0,batch,0,eval,clean,0,mean,auc,0.91,0.8,0.95\n"
        "batch-seed0,batch,0,adapt,clean,0,mean,auc,0.5,0.4,0.6\n"
        "batch-seed0,batch,0,eval,clean,0,acl,auc,0.7,0.6,0.8\n"
        "batch-seed0,batch,0,eval,noise,3,mean,auc,0.6,0.5,0.7\n"
        "group-seed0,group,0,eval,clean,0,mean,auc,0.83,0.7,0.9\n"
        "layer-seed0,layer,0,eval,clean,0,mean,auc,,,\n")
    assert _clean_aucs(tmp_path) == {"batch-seed0": 0.91, "group-seed0": 0.83, "layer-seed0": None}


@pytest.mark.parametrize("change, words", [
    (dict(volumes=0), "--volumes 0"),
    (dict(crop=7), "--crop 7"),
    (dict(crop=100_000), "--crop 100000"),
    (dict(epochs=0), "--epochs 0"),
    (dict(width=0), "--width 0"),
    (dict(width=6), "--width 6"),
    (dict(bootstrap=-1), "--bootstrap -1"),
    (dict(lesion_scale=0.0), "--lesion-scale 0.0"),
    (dict(seeds=(0, 0)), "--seeds 0,0"),
    (dict(seeds=()), "--seeds"),
    (dict(threads=0), "--threads 0"),
])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, change, words):
    out = tmp_path / "demo"
    with pytest.raises(MrRobustError, match=words) as info:
        demo(out, **{**dict(progress=False), **change})
    assert "\n" not in str(info.value)
    assert not out.exists()  # no demo.json: the corrected command is not blocked


def test_all_problems_are_named_in_one_line():
    with pytest.raises(MrRobustError, match=r"--volumes 0 .*--crop 7 .*--width 0 .*--epochs 0"):
        check_demo(volumes=0, slices=16, crop=7, lesion_scale=3.0, width=0, epochs=0, seed=0, bootstrap=200,
                   norms=list(DEMO_NORMS), seeds=[0, 1, 2])


def test_demo_refuses_other_settings_and_foreign_folders(tmp_path):
    out = tmp_path / "demo"
    _claim(out, {"crop": 32, "seed": 0})
    _claim(out, {"crop": 32, "seed": 0})  # the same settings: a resume
    with pytest.raises(MrRobustError, match="crop 32 -> 64"):
        _claim(out, {"crop": 64, "seed": 0})
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(MrRobustError, match="not a demo folder"):
        _claim(foreign, {"crop": 32})


def test_cli_refuses_bad_demo_and_synth_arguments_in_one_line(tmp_path):
    for args, words in ((["demo", "--out", tmp_path / "d", "--volumes", "0", "--crop", "7"], "--volumes 0"),
                        (["synth", tmp_path / "s", "--crop", "100000"], "--crop 100000")):
        code, _, err = call_cli(*args)
        assert code == 2 and words in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "d").exists() and not (tmp_path / "s").exists()


def test_a_killed_demo_resumes_to_the_same_bytes(finished_demo, tmp_path):
    """SIGKILL `mrrobust demo` while it trains and again while it evaluates; the same command then
    ends with the weights and RESULTS tables of an uninterrupted demo."""
    killed = tmp_path / "killed"
    kill_then_resume(cli_command("demo", "--out", killed, *SMALL), killed,
                     ("runs/*/checkpoints/last.ckpt", "results/predictions/*/*/*.npy"))
    _, whole = finished_demo
    for name in COMPARED:
        assert whole[name] == (killed / name).read_bytes(), name
