"""Settings trees: frozen dataclasses nested in sections, whose leaves are flat command-line flags.

    @dataclasses.dataclass(frozen=True)
    class DataConfig(Settings):
        shots: int = setting(1, "Support images per task (k).", minimum=1)

    @dataclasses.dataclass(frozen=True)
    class RunConfig(Settings):
        data: DataConfig = section(DataConfig)

    RunConfig.from_flags(shots=5).data.shots      # 5
    RunConfig().to_flags()                        # {"shots": 1}

Each leaf is written once: its default, `--help` text, allowed values and
lower bound live in its field, and each section states the rules that
relate its own fields (`_rules`). A section validates itself when it is made
and raises one `ConfigError` naming every bad flag. Flags are flat (`--shots`,
not `--data.shots`): a leaf's flag is its field's name unless `flag=` says
otherwise, and flag names are unique across the tree.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

from meta_drn_tf.errors import ConfigError


def setting(default: Any, help: str, choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None, *,
            flag: str | None = None, minimum: float | str | None = None,
            parse: Callable[[Any], Any] | None = None, unparse: Callable[[Any], Any] | None = None):
    """A leaf of a settings tree.

    Args:
        default: its value when not given.
        help: the flag's `--help` text.
        choices: the allowed values, or a function returning them (a registry read when asked).
        flag: the command-line name, when it differs from the field's.
        minimum: a lower bound (inclusive), or "positive"; None values always pass.
        parse: turns the flag's (string) value into the field's; `unparse` turns it back.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": choices, "flag": flag, "minimum": minimum, "parse": parse, "unparse": unparse})


def section(cls: type) -> dataclasses.Field:
    """A nested settings section (its defaults when not given)."""
    return dataclasses.field(default_factory=cls, metadata={"section": True})


@dataclasses.dataclass(frozen=True)
class Leaf:
    """A leaf as a flag: its name, the field names leading to it, the field."""

    flag: str
    path: tuple[str, ...]
    field: dataclasses.Field

    @property
    def help(self) -> str:
        return self.field.metadata["help"]

    @property
    def choices(self) -> tuple[str, ...] | None:
        choices = self.field.metadata["choices"]
        return choices() if callable(choices) else choices

    def parse(self, value: Any) -> Any:
        parse = self.field.metadata["parse"]
        return parse(value) if parse and value is not None else value

    def unparse(self, value: Any) -> Any:
        unparse = self.field.metadata["unparse"]
        return unparse(value) if unparse else value


def _is_section(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("section"))


def leaves(cls: type, path: tuple[str, ...] = ()) -> Iterator[Leaf]:
    """Every leaf of the settings class `cls`, depth first, in field order."""
    for f in dataclasses.fields(cls):
        if _is_section(f):
            yield from leaves(f.default_factory, path + (f.name,))
        else:
            yield Leaf(f.metadata["flag"] or f.name, path + (f.name,), f)


# The leaf types a saved file (flags.json) can get wrong; other leaves have their own `parse`.
TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _type_problem(f: dataclasses.Field, value: Any) -> str | None:
    kind = str(f.type).removesuffix(" | None")
    if f.metadata["parse"] or kind not in TYPES or (value is None and str(f.type).endswith("| None")):
        return None
    if not isinstance(value, TYPES[kind]) or (kind != "bool" and isinstance(value, bool)):
        return f"must be {'an' if kind == 'int' else 'a'} {kind}, not {type(value).__name__}"
    return None


def _leaf_problems(f: dataclasses.Field, value: Any) -> Iterator[str]:
    wrong_type = _type_problem(f, value)
    if wrong_type:
        yield wrong_type
        return
    choices, minimum = f.metadata["choices"], f.metadata["minimum"]
    choices = choices() if callable(choices) else choices
    if choices and value not in choices:
        yield f"must be one of {', '.join(choices)}"
    if isinstance(value, float) and not math.isfinite(value):
        yield "must be a finite number"
        return
    if minimum is None or not isinstance(value, (int, float)):
        return
    if minimum == "positive" and not value > 0:
        yield "must be positive"
    elif minimum != "positive" and value < minimum:
        yield "must be at least 1" if minimum == 1 else f"must be {minimum} or more"


class Settings:
    """The base of every section of a settings tree (a frozen dataclass)."""

    def __post_init__(self):
        self._complete()
        found = [f"--{self._flag(name)}={self._value(name)}: {why}" for name, why in self._problems()]
        if found:
            raise ConfigError("; ".join(found))

    def _complete(self) -> None:
        """Fills in defaults that depend on other fields (before validation)."""

    def _rules(self) -> Iterator[tuple[str, str]]:
        """(field, why) for each rule between this section's fields that does not hold."""
        return iter(())

    def _problems(self) -> Iterator[tuple[str, str]]:
        for f in dataclasses.fields(self):
            if not _is_section(f):
                for why in _leaf_problems(f, getattr(self, f.name)):
                    yield f.name, why
        yield from self._rules()

    def _value(self, name: str) -> Any:
        owner = self
        for part in name.split("."):
            owner = getattr(owner, part)
        return owner

    def _flag(self, name: str) -> str:
        # A rule of the whole tree may name a leaf of a section ("trainer.min_meta_lr").
        *sections, name = name.split(".")
        owner = self
        for part in sections:
            owner = getattr(owner, part)
        return next(f.metadata.get("flag") or f.name for f in dataclasses.fields(owner) if f.name == name)

    def to_flags(self) -> dict[str, Any]:
        """The tree as flat flag values (what `--flagfile` and flags.json hold)."""
        values = {}
        for leaf in leaves(type(self)):
            value = self
            for name in leaf.path:
                value = getattr(value, name)
            values[leaf.flag] = leaf.unparse(value)
        return values

    @classmethod
    def from_flags(cls, **values: Any):
        """The tree from flat flag values; flags not given take their defaults, unknown ones are refused."""
        unknown = sorted(set(values) - {leaf.flag for leaf in leaves(cls)})
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(unknown)}")
        return cls._build(values)

    @classmethod
    def _build(cls, values: dict[str, Any]):
        fields, found = {}, []
        for f in dataclasses.fields(cls):
            if _is_section(f):
                try:
                    fields[f.name] = f.default_factory._build(values)
                except ConfigError as e:  # every section's problems in one message
                    found.append(str(e))
                continue
            leaf = Leaf(f.metadata["flag"] or f.name, (f.name,), f)
            if leaf.flag in values:
                fields[f.name] = leaf.parse(values[leaf.flag])
        try:
            built = cls(**fields)
        except ConfigError as e:
            found.append(str(e))
        if found:
            raise ConfigError("; ".join(found))
        return built

    def replace(self, **flags: Any):
        """A copy with the settings named by their flags changed (validated)."""
        return type(self).from_flags(**{**self.to_flags(), **flags})
