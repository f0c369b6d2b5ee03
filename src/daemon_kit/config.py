"""Reading a daemon's configuration file: `read` loads and decodes it (the one step with side effects),
`Section` validates a mapping of it strictly. Every error is a `ConfigError` whose message starts with
the offending key (`routes[0].port: ...`); a key nobody read is reported as unknown by `done()`."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """The configuration is invalid; the message starts with the offending key."""


def read(
    path: str | Path,
    decode: Callable[[str], Any] = json.loads,
    kind: str = "JSON",
    malformed: tuple[type[Exception], ...] = (ValueError,),
) -> Any:
    """The decoded content of the file at `path`; `decode` raises one of `malformed` (yaml.safe_load:
    yaml.YAMLError) on text that is not `kind`."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        return decode(text)
    except malformed as error:
        raise ConfigError(f"config file {path} is not {kind}: {error}") from None


def default(settings: type, name: str) -> Any:
    """The default of option `name` of the dataclass `settings`: the one place a default is written,
    which the parser reads instead of repeating it."""
    option = settings.__dataclass_fields__[name]  # type: ignore[attr-defined]
    if option.default is not dataclasses.MISSING:
        return option.default
    if option.default_factory is not dataclasses.MISSING:
        return option.default_factory()
    raise KeyError(f"{settings.__name__}.{name} has no default")


def _bounds(minimum: float | None, maximum: float | None, above: float | None) -> str:
    parts = [f"greater than {above:g}"] if above is not None else []
    parts += [f"at least {minimum:g}"] if minimum is not None else []
    parts += [f"at most {maximum:g}"] if maximum is not None else []
    return " and ".join(parts)


class Section:
    """A mapping being read; remembers which keys were used so unknown keys are reported. An absent key
    and one given as null both take the default; without a default they are required."""

    def __init__(self, data: object, prefix: str = "") -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{prefix or 'config'}: must be a mapping")
        self._data: dict[str, Any] = data
        self._prefix = prefix
        self._used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def has(self, name: str) -> bool:
        return name in self._data

    def get(self, name: str, kind: type | tuple[type, ...] = object, default: Any = ..., what: str = "") -> Any:
        """The raw value, checked to be an instance of `kind` (a bool is never an int here)."""
        self._used.add(name)
        if name not in self._data or self._data[name] is None:
            if default is ...:
                raise ConfigError(f"{self.key(name)}: is required" + (f" ({what})" if what else ""))
            return default
        value = self._data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if object not in kinds and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
            raise ConfigError(f"{self.key(name)}: must be {what or 'a ' + kinds[0].__name__}")
        return value

    def section(self, name: str) -> Section:
        return Section(self.get(name, what="a mapping"), self.key(name))

    def optional_section(self, name: str) -> Section:
        """The section `name`, or an empty one (every key at its default) when it is absent."""
        return self.section(name) if self.has(name) else Section({}, self.key(name))

    def string(self, name: str, default: Any = ..., *, empty: bool = False) -> str:
        """A string, non-empty unless `empty` (an absent key gives `default` as it is)."""
        value = self.get(name, object, default, "a string")
        if self._data.get(name) is None:
            return value
        if not isinstance(value, str) or (not value and not empty):
            raise ConfigError(f"{self.key(name)}: must be a {'string' if empty else 'non-empty string'}")
        return value

    def one_of(self, name: str, choices: tuple[str, ...], default: Any = ...) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise ConfigError(f"{self.key(name)}: {value!r} is not one of {', '.join(choices)}")
        return value

    def log_level(self, name: str = "log_level") -> str:
        return self.one_of(name, LOG_LEVELS, "info")

    def file(self, name: str) -> Path:
        """The path of a file that exists."""
        path = Path(self.string(name))
        if not path.is_file():
            raise ConfigError(f"{self.key(name)}: file {path} does not exist")
        return path

    def address(self, name: str, default: Any = ...) -> str:
        """host:port."""
        value = self.string(name, default)
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"{self.key(name)}: {value!r} must be host:port")
        return value

    def number(
        self,
        name: str,
        default: Any = ...,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        above: float | None = None,
        integer: bool = False,
    ) -> Any:
        """A number (an int with `integer`) within the bounds: at least `minimum`, at most `maximum`,
        greater than `above`."""
        value = self.get(name, object, default, "a number")
        if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
            raise ConfigError(f"{self.key(name)}: must be {'an integer' if integer else 'a number'}")
        if not math.isfinite(value):  # YAML's .nan and .inf pass every bound below
            raise ConfigError(f"{self.key(name)}: must be a finite number")
        if (
            (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)
            or (above is not None and value <= above)
        ):
            raise ConfigError(f"{self.key(name)}: {value} is out of range (must be {_bounds(minimum, maximum, above)})")
        return value

    def port(self, name: str, default: Any = ...) -> int:
        """A port number; 0 (none) only as the default."""
        value = self.get(name, int, default, "an integer")
        if not 0 <= value < 65536 or (default is ... and value == 0):
            raise ConfigError(f"{self.key(name)}: {value} is not a port number")
        return value

    def boolean(self, name: str, default: Any = ...) -> bool:
        value = self.get(name, object, default, "true or false")
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(name)}: must be true or false")
        return value

    def string_map(self, name: str, default: Any = ...) -> dict[str, str]:
        value = self.get(name, object, default, "a mapping of strings")
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ConfigError(f"{self.key(name)}: must be a mapping of strings to strings")
        return dict(value)

    def list(self, name: str, default: Any = ()) -> list:
        value = self.get(name, object, default, "a list")
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{self.key(name)}: must be a list")
        return value

    def string_list(self, name: str, default: Any = ...) -> list[str]:
        """A list of non-empty strings."""
        value = self.get(name, object, default, "a list of strings")
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.key(name)}: must be a list of non-empty strings")
        return list(value)

    def done(self) -> None:
        """Reports the first key (in sorted order) that was never read."""
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")
