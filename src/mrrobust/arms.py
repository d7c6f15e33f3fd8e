"""Arms: the sets of RUNs that differ only in their training seed, the unit of comparison.

A RUN's arm configuration is its config's model section and training section without the seed
and without the settings that do not change what is learned (how and where it was computed).
`group_arms` puts runs of equal configuration into one arm, named by the norm when no other arm
has that norm, else by the norm plus every setting in which it differs from the first arm of
that norm (`batch`, `batch+augment=noise:3`). `--arm NAME=RUN,RUN,...` names arms explicitly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from mrrobust.errors import MrRobustError

# training settings that change how or where a run is computed, not what it learns
NOT_CONFIGURATION = ("seed", "compile", "accelerator", "devices", "num_nodes", "workers",
                     "precision")
ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=+,-]*$")


@dataclass
class Arm:
    """`name`, its `runs` (RUN names), `configuration` (flat dict) and whether `--arm` named it."""

    name: str
    runs: list[str]
    configuration: dict = field(default_factory=dict)
    explicit: bool = False


def arm_configuration(config: dict) -> dict:
    """The flat arm configuration of a RUN config: `model` keys, then `training` keys minus
    NOT_CONFIGURATION (a training key equal to a model key is prefixed `training.`)."""
    model = dict(config.get("model", {}))
    training = {k: v for k, v in config.get("training", {}).items() if k not in NOT_CONFIGURATION}
    flat = dict(model)
    for key, value in training.items():
        flat[f"training.{key}" if key in flat else key] = value
    return flat


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def group_arms(configs: dict[str, dict]) -> list[Arm]:
    """Arms of the RUNs `{run name: config}` by equal `arm_configuration`, in first-seen order."""
    arms: list[Arm] = []
    for run, config in configs.items():
        flat = arm_configuration(config)
        for arm in arms:
            if arm.configuration == flat:
                arm.runs.append(run)
                break
        else:
            arms.append(Arm(name="", runs=[run], configuration=flat))
    for arm in arms:
        norm = str(arm.configuration.get("norm", "?"))
        first = next(a for a in arms if a.configuration.get("norm") == arm.configuration.get("norm"))
        keys = sorted(set(arm.configuration) | set(first.configuration))
        differ = [k for k in keys if k != "norm" and arm.configuration.get(k) != first.configuration.get(k)]
        arm.name = "+".join([norm] + [f"{k}={_text(arm.configuration.get(k))}" for k in differ])
    return arms


def parse_arm(text: str) -> tuple[str, list[str]]:
    """`NAME=RUN,RUN,...` -> (name, [runs]); MrRobustError naming the problem."""
    name, sep, runs = str(text).partition("=")
    name = name.strip()
    listed = [r.strip() for r in runs.split(",") if r.strip()]
    if not sep or not name or not listed:
        raise MrRobustError(f"--arm {text!r}: expected NAME=RUN,RUN,... (e.g. batch=runs/batch-seed0,"
                            f"runs/batch-seed1)")
    if not ARM_NAME.match(name):
        raise MrRobustError(f"--arm {text!r}: the arm name {name!r} must start with a letter or "
                            f"digit and hold only letters, digits and _.:=+,-")
    return name, listed


def default_reference(arms: list[Arm], norms: dict[str, str]) -> str | None:
    """The arm named `batch`, else the first arm whose runs are batch norm (`norms` maps arm name
    -> norm), else None."""
    names = [arm.name for arm in arms]
    if "batch" in names:
        return "batch"
    return next((name for name in names if norms.get(name) == "batch"), None)


def resolve_arms(runs, arms: dict | None) -> tuple[list, dict | None]:
    """The RUN folders to read and the explicit arms {name: [folder as given]} (None without
    `arms`). With `arms`, positional `runs` are optional; when given, every arm member must be
    one of them and every one of them must be in an arm. Refused (one line): an arm naming a
    folder that does not exist or was not given, a run named twice (in one arm or two), a
    positional run in no arm, no runs at all."""
    from pathlib import Path

    positional = [] if runs is None else ([runs] if isinstance(runs, (str, Path)) else list(runs))
    if not arms:
        return positional, None
    given = {Path(run).resolve(): run for run in positional}
    seen: dict = {}
    explicit = {}
    for name, members in arms.items():
        if not members:
            raise MrRobustError(f"arm {name!r} names no run; pass --arm {name}=RUN,RUN,...")
        explicit[name] = []
        for member in members:
            path = Path(member).resolve()
            if positional and path not in given:
                raise MrRobustError(f"arm {name!r} names run {member}, which is not among the RUN "
                                    f"folders given; add it or fix the --arm")
            if not path.is_dir():
                raise MrRobustError(f"arm {name!r} names run {member}, which does not exist; "
                                    f"train it or fix the --arm")
            if path in seen:
                where = "twice" if seen[path] == name else f"and so does arm {seen[path]!r}"
                raise MrRobustError(f"arm {name!r} names run {member} {where}; a run belongs to "
                                    f"one arm, once")
            seen[path] = name
            explicit[name].append(member)
    loose = [str(run) for path, run in given.items() if path not in seen]
    if loose:
        raise MrRobustError(f"RUN {loose[0]} is in no --arm; name it in an arm or leave it out")
    return [member for members in explicit.values() for member in members], explicit
