"""Settings records (`synth_<challenge>.json`, `demo.json`): the same settings resume, other
settings and damaged records are one line naming what to do, and checking writes nothing."""

import json

import pytest

from mrrobust.errors import MrRobustError
from mrrobust.settings_record import changed_settings, matches_record

ADVICE = dict(if_damaged="delete it", if_changed="use the same settings")


def test_no_record_is_a_new_folder_and_the_same_settings_a_resume(tmp_path):
    record = tmp_path / "thing.json"
    assert matches_record(record, {"crop": 32}, "thing", **ADVICE) is False
    assert not record.exists()  # reads only
    record.write_text(json.dumps({"crop": 32, "seeds": [0, 1]}))
    assert matches_record(record, {"seeds": [0, 1], "crop": 32}, "thing", **ADVICE) is True  # key order is free


def test_other_settings_name_every_change_in_one_line(tmp_path):
    record = tmp_path / "thing.json"
    record.write_text(json.dumps({"crop": 32, "seed": 0, "gone": 1}))
    with pytest.raises(MrRobustError) as info:
        matches_record(record, {"crop": 64, "seed": 0, "new": 2}, "thing", **ADVICE)
    assert str(info.value) == (f"{tmp_path} holds a thing with other settings (crop 32 -> 64, new unset -> 2, "
                               f"gone 1 -> unset); use the same settings")
    assert json.loads(record.read_text()) == {"crop": 32, "seed": 0, "gone": 1}  # untouched


@pytest.mark.parametrize("content", [b"{", b"[1, 2]", b"\xff\xfe", b"", b"null"])
def test_a_damaged_record_is_one_line(tmp_path, content):
    record = tmp_path / "thing.json"
    record.write_bytes(content)
    with pytest.raises(MrRobustError, match=r"thing.json is damaged; delete it$") as info:
        matches_record(record, {"crop": 32}, "thing", **ADVICE)
    assert "\n" not in str(info.value)


def test_changed_settings_lists_only_what_differs():
    assert changed_settings({"a": 1, "b": [1]}, {"a": 1, "b": [1]}) == ""
    assert changed_settings({"a": 1, "b": None}, {"a": 2}) == "a 1 -> 2, b None -> unset"


def test_synth_and_demo_use_the_shared_record(tmp_path):
    from mrrobust.data.synth import synth
    from mrrobust.demo import _claim

    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "synth_singlecoil.json").write_text("[]")
    with pytest.raises(MrRobustError, match=r"synth_singlecoil.json is damaged; delete .*knee and it"):
        synth(tmp_path / "s", volumes=2, slices=2, crop=32)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "demo.json").write_text('{"crop": 32}')
    with pytest.raises(MrRobustError, match=r"holds a demo with other settings \(crop 32 -> 64\); pass another --out"):
        _claim(tmp_path / "d", {"crop": 64})
