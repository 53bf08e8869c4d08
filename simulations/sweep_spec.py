"""The sweep file (`aidmp sweep SWEEP.yaml`): its fixed shape, its checks, and its runs.

    base:  {task: adult, institutions: 5, rounds: 10, partition: "dirichlet:0.5"}
    grid:  {dp-epsilon: [0.5, 1, 3, 8, .inf], strategy: [fedavg, fedprox]}   # cross product
    seeds: [0, 1, 2]

Keys are `aidmp simulate`'s long option names without the dashes, so the options a sweep
accepts are read off the simulate command's own parser: a new simulate option is a sweep
key at once, with the same type and choices. Every mistake is reported with the line of
the file it is on, all of them at once, before any run starts.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from aidmp.errors import AidmpError

EPSILON_KEY = "dp-epsilon"
SEED_KEY = "seed"
# Simulate options a sweep sets itself (out, engine) or that make no sense per run.
RESERVED = {
    "out": "the sweep puts each run in DIR/runs/<id>/",
    "engine": "give it once for the whole sweep: aidmp sweep ... --engine ray|inprocess",
    "resume": "re-running `aidmp sweep` resumes the sweep; runs that finished are kept",
    "verbose": "each run's output is in DIR/runs/<id>/log.txt",
    "help": "not a run option",
}


class SweepFile(BaseModel):
    """The file's shape, fixed so that sweeps can be shared."""

    model_config = ConfigDict(extra="forbid")

    base: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}
    seeds: list[int] = [0]

    @field_validator("grid")
    @classmethod
    def _lists_not_empty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [key for key, values in grid.items() if not values]
        if empty:
            raise ValueError(f"grid key(s) with no values: {', '.join(empty)}")
        return grid

    @field_validator("seeds")
    @classmethod
    def _seeds_not_empty(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("give at least one seed, e.g. seeds: [0]")
        return seeds


@dataclass(frozen=True)
class Option:
    """One `aidmp simulate` option as a sweep key: its type and how it becomes argv."""

    key: str
    flag: str
    kind: Literal["flag", "value", "optional-value"]  # store_true | --k V | --k [V]
    adapter: TypeAdapter[Any]


def _epsilon(value: Any) -> float:
    """ε: a number, or `.inf` / `none` / `null` for no DP (the run gets --no-dp)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "inf")):
        return math.inf
    number = TypeAdapter(float).validate_python(value)
    if not number > 0:
        raise ValueError("ε must be > 0, or .inf / none for no DP")
    return number


def _partition(value: Any) -> str:
    from aidmp.tasks.partition import parse_partition

    try:
        return str(parse_partition(str(value)))
    except AidmpError as exc:
        raise ValueError(str(exc)) from None


def _task_type() -> Any:
    from aidmp.tasks import TASK_NAMES

    return Literal[TASK_NAMES]


def _strategy_type() -> Any:
    from aidmp.config import StrategyName

    return StrategyName


def _partition_type() -> Any:
    return Annotated[str, BeforeValidator(_partition)]


# Options whose valid values simulate's parser does not list (it checks them after).
_NAMED_VALUES: dict[str, Callable[[], Any]] = {
    "task": _task_type,
    "strategy": _strategy_type,
    "partition": _partition_type,
}


@functools.cache
def simulate_options() -> dict[str, Option]:
    """Every long option of `aidmp simulate`, read off its parser."""
    from aidmp.cli.researcher import add_simulate

    root = argparse.ArgumentParser()
    add_simulate(root.add_subparsers())
    parser = next(
        action.choices["simulate"]
        for action in root._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    options: dict[str, Option] = {}
    for action in parser._actions:
        flag = max(action.option_strings, key=len, default="")
        if not flag.startswith("--"):
            continue
        key = flag[2:]
        if key in RESERVED:
            continue
        if key == EPSILON_KEY:
            options[key] = Option(key, flag, "value", TypeAdapter(Any))
            continue
        if key in _NAMED_VALUES:  # simulate checks these itself, later; a sweep, at once
            options[key] = Option(key, flag, "value", TypeAdapter(_NAMED_VALUES[key]()))
            continue
        kind: Literal["flag", "value", "optional-value"] = "value"
        base_type: Any = action.type if action.type in (int, float) else str
        if isinstance(action, argparse._StoreTrueAction):
            kind, base_type = "flag", bool
        elif action.nargs == "?":  # --govern [POLICY]: true for the bundled policy
            kind, base_type = "optional-value", bool | str
        if action.choices:
            base_type = Literal[tuple(action.choices)]
        options[key] = Option(key, flag, kind, TypeAdapter(base_type))
    return options


# --- line numbers -------------------------------------------------------------------------


def _lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    """Map each key's path to its 1-based line: ('grid', 'strategy', 1) -> 3."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            sub = (*path, key_node.value)
            out[sub] = key_node.start_mark.line + 1
            _lines(value_node, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _lines(item, (*path, index), out)


class SweepErrors:
    """Mistakes found in the file, each with its line, reported together."""

    def __init__(self, path: Path, lines: dict[tuple[Any, ...], int]) -> None:
        self.path, self.lines, self.messages = path, lines, list[str]()

    def add(self, where: tuple[Any, ...], message: str) -> None:
        line = next(
            (self.lines[where[:n]] for n in range(len(where), -1, -1) if where[:n] in self.lines),
            1,
        )
        name = ".".join(str(part) for part in where) or "file"
        self.messages.append(f"{self.path}:{line}: {name}: {message}")

    def raise_any(self) -> None:
        if self.messages:
            raise AidmpError("bad sweep file\n" + "\n".join(self.messages))


def _unknown_key_message(key: str, options: dict[str, Option]) -> str:
    if key in RESERVED:
        return f"not a sweep key: {RESERVED[key]}"
    if key == SEED_KEY:
        return "give seeds at the top level: seeds: [0, 1, 2]"
    valid = sorted(k for k in options if k != SEED_KEY)
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown option; {hint}valid keys: {', '.join(valid)}"


def _pydantic_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{first['msg']} (got {first['input']!r})"


# --- the sweep ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One run of the sweep: its id and its options (base | grid point | seed)."""

    id: str
    options: dict[str, Any]
    grid_point: dict[str, Any]


@dataclass(frozen=True)
class Sweep:
    path: Path
    file: SweepFile
    runs: list[RunSpec]
    grid: dict[str, list[Any]]  # the file's grid, its values checked and normalised


def load_sweep(path: Path) -> Sweep:
    """Read and check SWEEP.yaml; every mistake is named with its line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise AidmpError(f"cannot read the sweep file {path}: {exc.strerror or exc}") from None
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise AidmpError(f"{path}{line}: not valid YAML: {exc}") from None
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _lines(node, (), lines)
    errors = SweepErrors(path, lines)
    if not isinstance(raw, dict):
        errors.add((), "a sweep file is a mapping with base:, grid: and seeds:")
        errors.raise_any()
    sections = list(SweepFile.model_fields)
    for key in raw:
        if key not in sections:
            close = difflib.get_close_matches(str(key), sections, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            errors.add((key,), f"unknown section; {hint}a sweep file has {', '.join(sections)}")
    try:
        sweep_file = SweepFile.model_validate({k: v for k, v in raw.items() if k in sections})
    except ValidationError as exc:
        for err in exc.errors():
            errors.add(tuple(err["loc"]), f"{err['msg']} (got {err['input']!r})")
        errors.raise_any()
        raise  # unreachable: raise_any raised
    options = simulate_options()
    _check_values(sweep_file, options, errors)
    errors.raise_any()
    grid = {k: [_normalise(options[k], v) for v in vs] for k, vs in sweep_file.grid.items()}
    return Sweep(path, sweep_file, _expand(sweep_file, options), grid)


def _check_values(sweep: SweepFile, options: dict[str, Option], errors: SweepErrors) -> None:
    for key in sweep.grid:
        if key in sweep.base:
            errors.add(("grid", key), "is also in base:; give it in one place")
    sections: list[tuple[str, str, list[tuple[Any, Any]]]] = [
        *(("base", k, [(None, v)]) for k, v in sweep.base.items()),
        *(("grid", k, list(enumerate(vs))) for k, vs in sweep.grid.items()),
    ]
    for section, key, values in sections:
        if key not in options or key == SEED_KEY:
            errors.add((section, key), _unknown_key_message(key, options))
            continue
        for index, value in values:
            where = (section, key) if index is None else (section, key, index)
            try:
                _normalise(options[key], value)
            except ValidationError as exc:
                errors.add(where, _pydantic_message(exc))
            except ValueError as exc:
                errors.add(where, f"{exc} (got {value!r})")


def _normalise(option: Option, value: Any) -> Any:
    if option.key == EPSILON_KEY:
        return _epsilon(value)
    return option.adapter.validate_python(value)


def _expand(sweep: SweepFile, options: dict[str, Option]) -> list[RunSpec]:
    """The cross product of the grid, once per seed, in the file's order."""
    base = {k: _normalise(options[k], v) for k, v in sweep.base.items()}
    keys = list(sweep.grid)
    runs = []
    for point in itertools.product(*(sweep.grid[k] for k in keys)):
        grid_point = {k: _normalise(options[k], v) for k, v in zip(keys, point, strict=True)}
        for seed in sweep.seeds:
            run_options = {**base, **grid_point, SEED_KEY: seed}
            runs.append(RunSpec(run_id(run_options, grid_point), run_options, grid_point))
    return runs


def run_id(options: dict[str, Any], grid_point: dict[str, Any]) -> str:
    """A readable, deterministic folder name: the grid point and seed, then a hash of
    every option (so a changed base: makes new runs instead of reusing old ones)."""
    canonical = json.dumps({k: jsonable(v) for k, v in options.items()}, sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
    parts = [*grid_point.items(), (SEED_KEY, options[SEED_KEY])]
    slug = "__".join(f"{k}_{jsonable(v)}" for k, v in parts)
    slug = re.sub(r"[^A-Za-z0-9._=-]+", "-", slug)[:80]
    return f"{slug}__{digest}"


def jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return value


def simulate_argv(run: RunSpec, out: Path, engine: str) -> list[str]:
    """The `aidmp simulate` command line of one run."""
    options = simulate_options()
    argv = ["simulate", "--out", str(out), "--engine", engine]
    for key, value in run.options.items():
        if key == SEED_KEY:
            argv += ["--seed", str(value)]
            continue
        option = options[key]
        if key == EPSILON_KEY:
            argv += ["--no-dp"] if math.isinf(value) else [option.flag, repr(value)]
        elif option.kind == "flag":
            argv += [option.flag] if value else []
        elif option.kind == "optional-value":
            if value is True:
                argv += [option.flag]
            elif value not in (False, None, ""):
                argv += [option.flag, str(value)]
        else:
            argv += [option.flag, repr(value) if isinstance(value, float) else str(value)]
    return argv
