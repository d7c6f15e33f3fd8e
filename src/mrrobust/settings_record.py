"""Settings records: the JSON file a resumable command keeps in its output folder, holding the
settings that made it (`synth_<challenge>.json` of `synth`, `demo.json` of `demo`).

The same command with the same settings resumes; with other settings it is refused in one
line that names every setting that changed, before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

from mrrobust.errors import MrRobustError


def changed_settings(before: dict, settings: dict) -> str:
    """`"key old -> new, ..."` for every key whose value differs; a key one side lacks is `unset` there."""
    unset = object()
    shown = lambda value: "unset" if value is unset else value  # noqa: E731
    keys = [*settings, *(k for k in before if k not in settings)]
    return ", ".join(f"{k} {shown(before.get(k, unset))} -> {shown(settings.get(k, unset))}"
                     for k in keys if before.get(k, unset) != settings.get(k, unset))


def matches_record(record: Path, settings: dict, what: str, if_damaged: str, if_changed: str) -> bool:
    """True when `record` holds exactly `settings` (a resume); False when there is no record.

    Raises MrRobustError, one line: `"<record> is damaged; <if_damaged>"` when it is not a JSON
    object, `"<folder> holds a <what> with other settings (<changes>); <if_changed>"` when
    it holds other settings (folder: the record's). Reads only."""
    record = Path(record)
    if not record.is_file():
        return False
    try:
        before = json.loads(record.read_text())
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
        before = None
    if not isinstance(before, dict):
        raise MrRobustError(f"{record} is damaged; {if_damaged}")
    if before != settings:
        raise MrRobustError(f"{record.parent} holds a {what} with other settings "
                            f"({changed_settings(before, settings)}); {if_changed}")
    return True
