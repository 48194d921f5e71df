"""Builds a ``Config`` from a YAML file and the environment, and says precisely what is wrong when it cannot.

    load(path, environ=..., listen_host=..., listen_port=...)
      1. read the file and compose its YAML into nodes that carry line numbers (a syntax error stops here)
      2. _NodeReader walks the nodes against the schema's type hints: unknown and duplicate keys, wrong
         types, invalid enum values. A setting that cannot be read falls back to its default so that step 4
         still sees a whole config; a broken section or list entry leaves nothing for step 4 to check.
      3. api_key "env:NAME" values are read from the environment
      4. _semantic_issues: ranges, uniqueness, routes -> backends cross-references
      5. GATEWAYD_HOST / GATEWAYD_PORT override the file; an unusable value (a port out of range, a host that
         is not loopback) is a warning and is ignored: a stray variable must not stop a service
      6. the command line's --host / --port override both; an unusable value is an error naming the flag
      7. the listen host must be a loopback address unless auth.mode is keys; the error names
         where the host came from (the file's line, or the flag)
    Every problem found by steps 2 to 7 is collected; one ConfigError lists them all.

Where the YAML is friendlier than the dataclasses:

- a route target may be a plain string: ``- gpu`` means ``- {backend: gpu}``;
- ``models:`` may be one string or a list of them;
- ``discovery.ports`` is a mapping ``{11434: ollama, 8080: llama-server}``;
- an empty section or list (``routes:`` with everything under it commented out) means "nothing given";
- a section starts from the nearest enclosing section of the same type: a backend's ``timeouts:`` keys
  overlay the top-level ``timeouts``, so every backend holds a complete ``Timeouts``.

Nothing here writes anything; reading the file is the only IO.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import math
import re
import signal
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from gatewayd.config.access import access_problems, access_warnings
from gatewayd.config.redaction import redact_url
from gatewayd.config.schema import AuthMode, Backend, Config, RouteTarget, StoreSettings
from gatewayd.errors import ConfigError, ConfigIssue

HOST_ENV = "GATEWAYD_HOST"
PORT_ENV = "GATEWAYD_PORT"
MAX_PORT = 65535
LOG_LEVELS = ("debug", "info", "warning", "error")
API_KEY_ENV_PREFIX = "env:"
#: what ``redacted`` shows in place of an API key
REDACTED = "***"
#: keys and admin tokens shorter than this are warned about (a guessable secret)
MIN_SECRET_CHARS = 16
EMPTY_FILE_MESSAGE = "the file holds no settings (it is empty or only comments)"

_BACKEND_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: an instance name travels in a response header: printable ASCII, no spaces at its ends
_INSTANCE_NAME = re.compile(r"[!-~](?:[ -~]{0,198}[!-~])?")
_SECRET_FIELDS = frozenset({"api_key", "key", "admin_token", "password"})
#: dataclass fields that are not settings and so cannot be written in the file
_NOT_IN_FILE: Mapping[type, frozenset[str]] = {Config: frozenset({"source"})}
#: number settings where 0 means "off" rather than being out of range
_ZERO_ALLOWED = frozenset({"idle_ttl_seconds"})
_SIGNALS = frozenset(name for name in dir(signal) if name.startswith("SIG") and not name.startswith("SIG_"))
#: placeholders a managed backend's command (and its url, for ${PORT}) may use
PORT_PLACEHOLDER = "${PORT}"
MODEL_PATH_PLACEHOLDER = "${MODEL_PATH}"
PLACEHOLDERS = (PORT_PLACEHOLDER, "${HOST}", MODEL_PATH_PLACEHOLDER, "${ID}")
_PLACEHOLDER = re.compile(r"\$\{[^}]*\}")
#: sections that may be written as a plain string, meaning that one field
_SHORTHAND: Mapping[type, str] = {RouteTarget: "backend"}

_STR, _INT, _FLOAT, _BOOL, _NULL = (
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null")
)
#: the YAML tags each scalar type accepts: an integer is a fine float, but a boolean is no number and "8080"
#: is no integer
_SCALAR_TAGS: Mapping[type, frozenset[str]] = {
    str: frozenset({_STR}),
    int: frozenset({_INT}),
    float: frozenset({_INT, _FLOAT}),
    bool: frozenset({_BOOL}),
}
_SCALAR_NAMES: Mapping[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
}
_TAG_NAMES: Mapping[str, str] = {
    _STR: "a string",
    _INT: "an integer",
    _FLOAT: "a decimal number",
    _BOOL: "a boolean",
    _NULL: "an empty value",
    "tag:yaml.org,2002:timestamp": "a date",
}


class _Invalid(enum.Enum):
    INVALID = enum.auto()


#: what the reader returns for a value it could not build (the reason is already recorded)
INVALID: Final = _Invalid.INVALID


@dataclass(frozen=True)
class LoadedConfig:
    """A valid config, and the problems with environment overrides that were ignored to build it."""

    config: Config
    warnings: tuple[ConfigIssue, ...]


def load(
    path: Path | None,
    *,
    environ: Mapping[str, str],
    listen_host: str | None = None,
    listen_port: int | None = None,
) -> LoadedConfig:
    """Read, validate and return the config at ``path`` (None: the built-in defaults), with the environment
    overrides and then ``listen_host``/``listen_port`` (the CLI's --host/--port) applied. Raises ConfigError
    listing every problem found; never returns a partial config."""
    if path is None:
        config: Config | _Invalid = Config()
        at = _Locations("built-in defaults", {})
        issues: list[ConfigIssue] = []
    else:
        reader = _NodeReader(str(path))
        config = reader.config(_compose(path))
        at = _Locations(reader.source, reader.lines)
        issues = reader.issues
    if config is INVALID:
        raise ConfigError(_in_file_order(issues))
    config, key_issues = _resolve_api_keys(config, environ, at)
    issues += [*key_issues, *_semantic_issues(config, at)]
    secret_warnings = [] if key_issues else _short_secret_warnings(config, at)
    config, warnings = _apply_environment(config, environ)
    warnings = [*secret_warnings, *warnings]
    config, flag_issues = _apply_flags(config, listen_host, listen_port)
    public = not is_loopback_host(config.server.host)
    if not flag_issues and public and config.auth.mode is not AuthMode.KEYS:
        message, hint = _public_host_problem(config.server.host)
        if listen_host is not None:
            flag_issues.append(ConfigIssue("--host", message, hint=hint))
        else:
            issues.append(at.issue("server.host", message, hint))
    issues = _in_file_order(issues) + flag_issues
    if issues:
        raise ConfigError(issues)
    warnings += [at.issue(key, message, hint) for key, message, hint in access_warnings(config)]
    return LoadedConfig(config, tuple(warnings))


def _apply_flags(config: Config, host: str | None, port: int | None) -> tuple[Config, list[ConfigIssue]]:
    """``config`` listening on ``host``/``port`` where given; problems name the flag."""
    issues: list[ConfigIssue] = []
    if port is not None and not 0 <= port <= MAX_PORT:
        issues.append(ConfigIssue("--port", f"{port} is not a port number from 0 to {MAX_PORT}"))
    if host is not None:
        host = host.strip()
        if not host:
            issues.append(ConfigIssue("--host", "the host must not be empty"))
    if issues:
        return config, issues
    server = dataclasses.replace(
        config.server,
        host=host or config.server.host,
        port=config.server.port if port is None else port,
    )
    return dataclasses.replace(config, server=server), issues


def is_loopback_host(host: str) -> bool:
    """True for "localhost", 127.0.0.0/8 and ::1: addresses only this machine can reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redacted(config: Config) -> dict[str, object]:
    """The whole config as plain dicts, lists and scalars (enums as their values) for diagnostics, with
    every API key shown as "***" (an absent key stays None)."""
    return _plain_fields(config)


def template_text() -> str:
    """The commented example config that ``gatewayd init`` writes; it loads to the built-in defaults."""
    return resources.files("gatewayd.config").joinpath("template.yaml").read_text(encoding="utf-8")


# -- 1. reading the file ----------------------------------------------------------------------------------


def _compose(path: Path) -> Node | None:
    """The file's YAML node tree (None for an empty file). Raises ConfigError if it cannot be read or
    parsed; a syntax error is reported with its line but without the text around it, which may hold a key."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = f"run 'gatewayd init {path}' to write a commented example"
        raise ConfigError([ConfigIssue(source, "no such file", hint=hint)]) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue(source, "cannot read it: it is not UTF-8 text")]) from None
    except OSError as error:
        raise ConfigError([ConfigIssue(source, f"cannot read it: {error.strerror}")]) from None
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        context = error.context or ""
        if context and error.context_mark is not None and error.context_mark.line + 1 != line:
            context += f" (from line {error.context_mark.line + 1})"
        what = "; ".join(part for part in (context, error.problem) if part)
        raise ConfigError([ConfigIssue(source, f"invalid YAML: {what}", line=line)]) from None
    except yaml.YAMLError as error:
        raise ConfigError([ConfigIssue(source, f"invalid YAML: {error}")]) from None


# -- 2. walking the nodes ---------------------------------------------------------------------------------


class _NodeReader:
    """Builds schema values from YAML nodes, driven by the dataclasses' type hints.

    Never raises for a problem in the file: it records a ConfigIssue in ``issues`` and returns INVALID for
    the value it could not build. ``lines`` maps every key path it read to the line of its value.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.issues: list[ConfigIssue] = []
        self.lines: dict[str, int] = {}
        self._constructor = SafeConstructor()
        self._resolver = Resolver()

    def config(self, root: Node | None) -> Config | _Invalid:
        """The Config the whole file spells. A file that holds nothing (empty, only comments, a bare
        ``---`` or null) is refused: a file cut short (a failed write, ``: > config.yaml``) must not
        become the built-in defaults, which drop every route and turn auth off. ``{}`` asks for the
        defaults on purpose."""
        if root is None or _is_null(root):
            hint = (
                "write settings into it ('gatewayd init' writes a commented example); for the built-in "
                "defaults on purpose write {} in it, or run without a config file"
            )
            line = None if root is None else _line(root)
            self.issues.append(ConfigIssue(self.source, EMPTY_FILE_MESSAGE, line=line, hint=hint))
            return INVALID
        if not isinstance(root, MappingNode):
            hint = "the file is a mapping of sections such as server:, backends: and routes:"
            self._issue(root, "", f"expected a mapping at the top level, found {_describe(root)}", hint)
            return INVALID
        config = self.read(root, Config, "", {})
        return config if config is INVALID else dataclasses.replace(config, source=self.source)

    def read(self, node: Node, tp: Any, key: str, scope: Mapping[type, object]) -> Any:
        """The value of type ``tp`` that ``node`` spells, or INVALID. ``scope`` holds the sections read so
        far in the enclosing mappings, by type, for a nested section of the same type to start from."""
        self.lines.setdefault(key, _line(node))
        tp, optional = _unwrap_optional(tp)
        if optional and _is_null(node):
            return None
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self._section(node, tp, key, scope)
        item = _tuple_item(tp)
        if item is not None and typing.get_origin(item) is tuple:
            return self._pairs(node, tp, key)
        if item is not None:
            return self._sequence(node, tp, key, scope)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return self._enum(node, tp, key)
        return self._scalar(node, tp, key)

    def _section(self, node: Node, cls: type, key: str, scope: Mapping[type, object]) -> object:
        shorthand = _SHORTHAND.get(cls)
        if shorthand is not None and isinstance(node, ScalarNode) and not _is_null(node):
            value = self.read(node, typing.get_type_hints(cls)[shorthand], _join(key, shorthand), scope)
            return INVALID if value is INVALID else cls(**{shorthand: value})
        items = self._mapping(node, cls, key)
        if items is INVALID:
            return INVALID
        hints = typing.get_type_hints(cls)
        settings = [f for f in dataclasses.fields(cls) if f.name not in _NOT_IN_FILE.get(cls, ())]
        names = [f.name for f in settings]
        given: dict[str, Node] = {}
        for key_node, value_node in items:
            if key_node.value in names:
                given[key_node.value] = value_node
                self.lines[_join(key, key_node.value)] = _line(key_node)  # "backends:", not its first entry
            else:
                hint = _did_you_mean(key_node.value, names) or f"valid keys: {', '.join(names)}"
                self._issue(key_node, _join(key, key_node.value), f"unknown key '{key_node.value}'", hint)
        start = scope.get(cls)
        inner = dict(scope)
        values: dict[str, object] = {}
        complete = True
        for f in settings:
            tp = hints[f.name]
            fallback = _fallback(f, tp, start, inner)
            if f.name in given:
                value = self.read(given[f.name], tp, _join(key, f.name), inner)
                if value is INVALID and fallback is not dataclasses.MISSING and _is_leaf(tp):
                    value = fallback  # reported already; the default lets the semantic checks still run
            elif fallback is not dataclasses.MISSING:
                value = fallback
            else:
                self._issue(node, key, f"missing required key '{f.name}'")
                value = INVALID
            if value is INVALID:
                complete = False
                continue
            values[f.name] = value
            if dataclasses.is_dataclass(value):
                inner[type(value)] = value
        return cls(**values) if complete else INVALID

    def _mapping(self, node: Node, tp: Any, key: str) -> list[tuple[ScalarNode, Node]] | _Invalid:
        """The entries of a mapping node, without duplicate keys (each reported). Null is an empty mapping."""
        if _is_null(node):
            return []
        if not isinstance(node, MappingNode):
            self._wrong_type(node, tp, key)
            return INVALID
        first_lines: dict[str, int] = {}
        items: list[tuple[ScalarNode, Node]] = []
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self._issue(key_node, key, f"a key must be a plain name, found {_describe(key_node)}")
                continue
            name = key_node.value
            if name in first_lines:
                message = f"duplicate key '{name}' (first set on line {first_lines[name]})"
                self._issue(key_node, _join(key, name), message, "a key may appear once: remove one of them")
                continue
            first_lines[name] = _line(key_node)
            items.append((key_node, value_node))
        return items

    def _pairs(self, node: Node, tp: Any, key: str) -> object:
        """``tuple[tuple[K, V], ...]`` is written as a mapping ``{K: V}``, in order."""
        items = self._mapping(node, tp, key)
        if items is INVALID:
            return INVALID
        key_type, value_type = typing.get_args(_tuple_item(tp))
        pairs = []
        for key_node, value_node in items:
            entry_key = _join(key, key_node.value)
            pairs.append(
                (
                    self.read(key_node, key_type, entry_key, {}),
                    self.read(value_node, value_type, entry_key, {}),
                )
            )
        if any(part is INVALID for pair in pairs for part in pair):
            return INVALID
        return tuple(pairs)

    def _sequence(self, node: Node, tp: Any, key: str, scope: Mapping[type, object]) -> object:
        """A list; null is an empty one, and a single string stands for a list of one string."""
        item_type = _tuple_item(tp)
        if _is_null(node):
            return ()
        if item_type is str and isinstance(node, ScalarNode) and node.tag == _STR:
            return (node.value,)
        if not isinstance(node, SequenceNode):
            self._wrong_type(node, tp, key)
            return INVALID
        values = [self.read(item, item_type, f"{key}[{i}]", scope) for i, item in enumerate(node.value)]
        return INVALID if any(value is INVALID for value in values) else tuple(values)

    def _enum(self, node: Node, cls: type[enum.Enum], key: str) -> object:
        if not (isinstance(node, ScalarNode) and node.tag == _STR):
            self._wrong_type(node, cls, key)
            return INVALID
        valid = [member.value for member in cls]
        if node.value in valid:
            return cls(node.value)
        self._issue(
            node, key, f"'{node.value}' is not one of: {', '.join(valid)}", _did_you_mean(node.value, valid)
        )
        return INVALID

    def _scalar(self, node: Node, tp: type, key: str) -> object:
        tags = _SCALAR_TAGS.get(tp)
        if tags is None:
            raise TypeError(f"the config schema uses a type the loader cannot read: {tp!r}")
        if not (isinstance(node, ScalarNode) and node.tag in tags):
            self._wrong_type(node, tp, key)
            return INVALID
        value = self._constructor.construct_object(node)
        if tp is float:
            value = float(value)
            if not math.isfinite(value):
                self._issue(node, key, "expected a finite number")
                return INVALID
        return value

    def _wrong_type(self, node: Node, tp: Any, key: str) -> None:
        secret = _last_name(key) in _SECRET_FIELDS
        message = f"expected {_expected(tp)}, found {_describe(node, show_value=not secret)}"
        self._issue(node, key, message, self._type_hint(node, tp, secret))

    def _type_hint(self, node: Node, tp: Any, secret: bool) -> str | None:
        if not isinstance(node, ScalarNode):
            return None
        if node.tag == _NULL:
            return "give it a value, or remove the line to use the default"
        if node.tag == _STR and node.style in ("'", '"'):
            unquoted = self._resolver.resolve(ScalarNode, node.value, (True, False))
            if unquoted in _SCALAR_TAGS.get(tp, ()):
                return "remove the quotes"
        if tp is str and not secret:
            return f'quote it: "{node.value}"'
        return None

    def _issue(self, node: Node, key: str, message: str, hint: str | None = None) -> None:
        self.issues.append(ConfigIssue(self.source, message, line=_line(node), key=key or None, hint=hint))


def _fallback(field: dataclasses.Field[Any], tp: Any, start: object, scope: Mapping[type, object]) -> Any:
    """A field's value when the file does not give one: from the section this one starts from, else from
    an enclosing section of the field's type, else the field's default; MISSING for a required field."""
    if start is not None:
        return getattr(start, field.name)
    if isinstance(tp, type) and tp in scope:
        return scope[tp]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(X, True) for ``X | None``; (tp, False) for anything else."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        others = [arg for arg in args if arg is not type(None)]
        if len(args) == 2 and len(others) == 1:
            return others[0], True
    return tp, False


def _tuple_item(tp: Any) -> Any:
    """X for ``tuple[X, ...]``, else None."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
    return None


def _is_leaf(tp: Any) -> bool:
    """Not a section nor a list of sections: a setting whose default can stand in for a bad value."""
    tp, _ = _unwrap_optional(tp)
    item = _tuple_item(tp)
    return not dataclasses.is_dataclass(tp) and not (item is not None and dataclasses.is_dataclass(item))


def _expected(tp: Any) -> str:
    tp, optional = _unwrap_optional(tp)
    item = _tuple_item(tp)
    if dataclasses.is_dataclass(tp):
        shorthand = _SHORTHAND.get(tp) if isinstance(tp, type) else None
        text = "a mapping" + (f" or a {shorthand} name" if shorthand else "")
    elif item is str:
        text = "a string or a list of strings"
    elif item is not None and typing.get_origin(item) is tuple:
        text = "a mapping"
    elif item is not None:
        text = "a list"
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        text = "one of: " + ", ".join(member.value for member in tp)
    else:
        text = _SCALAR_NAMES[tp]
    return f"{text} or null" if optional else text


def _describe(node: Node, *, show_value: bool = True) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    kind = _TAG_NAMES.get(node.tag, f"a value tagged {node.tag}")
    if node.tag == _NULL or not show_value:
        return kind
    text = node.value if len(node.value) <= 40 else node.value[:37] + "..."
    return f"{kind} ({text!r})" if node.tag == _STR else f"{kind} ({text})"


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _join(key: str, name: object) -> str:
    return f"{key}.{name}" if key else str(name)


_LAST_PART = re.compile(r"(?:\.[^.\[\]]+|\[\d+\])$")


def _parent(key: str) -> str:
    match = _LAST_PART.search(key)
    return key[: match.start()] if match else ""


def _last_name(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _did_you_mean(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean '{close[0]}'?" if close else None


def _in_file_order(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    return sorted(issues, key=lambda issue: issue.line if issue.line is not None else 0)


# -- 3. and 4. secrets and semantic checks ----------------------------------------------------------------


@dataclass(frozen=True)
class _Locations:
    """Where each key was written in ``source``. A key that was not written is located at its nearest
    written parent (a default that conflicts with a written value points to the section)."""

    source: str
    lines: Mapping[str, int]

    def written(self, key: str) -> bool:
        return key in self.lines

    def issue(self, key: str, message: str, hint: str | None = None) -> ConfigIssue:
        located = key
        while located and located not in self.lines:
            located = _parent(located)
        return ConfigIssue(self.source, message, line=self.lines.get(located), key=key, hint=hint)


def _resolve_api_keys(
    config: Config, environ: Mapping[str, str], at: _Locations
) -> tuple[Config, list[ConfigIssue]]:
    """``config`` with each secret written "env:NAME" (a backend's ``api_key``, a declared key's ``key``,
    ``auth.admin_token``) replaced by that variable's value. An unset or empty variable is an issue that
    names the variable; no message ever contains a secret."""
    issues: list[ConfigIssue] = []

    def resolve(value: str | None, key: str) -> str | None:
        if value is None or not value.startswith(API_KEY_ENV_PREFIX):
            return value
        name = value.removeprefix(API_KEY_ENV_PREFIX)
        found = environ.get(name)
        if not name:
            issues.append(at.issue(key, "'env:' names no variable", "write env:NAME"))
        elif found is None:
            hint = f"set {name} in gatewayd's environment (for a service: in its unit or plist)"
            issues.append(at.issue(key, f"environment variable {name} is not set", hint))
        elif not found:
            issues.append(at.issue(key, f"environment variable {name} is empty"))
        else:
            return found
        return value

    backends = tuple(
        dataclasses.replace(b, api_key=resolve(b.api_key, f"backends[{i}].api_key"))
        for i, b in enumerate(config.backends)
    )
    keys = tuple(
        dataclasses.replace(k, key=resolve(k.key, f"keys[{i}].key") or k.key)
        for i, k in enumerate(config.keys)
    )
    auth = dataclasses.replace(config.auth, admin_token=resolve(config.auth.admin_token, "auth.admin_token"))
    store = dataclasses.replace(config.store, password=resolve(config.store.password, "store.password"))
    return dataclasses.replace(config, backends=backends, keys=keys, auth=auth, store=store), issues


def _semantic_issues(config: Config, at: _Locations) -> list[ConfigIssue]:
    """What a well-formed config can still get wrong. Values not written in the file are defaults, or were
    inherited from a section checked where it is written, so number ranges are checked where written."""
    issues: list[ConfigIssue] = []
    for key, name, number in _numbers(config, ""):
        if not at.written(key):
            continue
        if name == "port" and not 0 <= number <= MAX_PORT:
            issues.append(
                at.issue(key, f"{number} is not a port number from 0 to {MAX_PORT} (0 = any free port)")
            )
        elif name in _ZERO_ALLOWED and number < 0:
            issues.append(at.issue(key, f"must be 0 or more, found {number}"))
        elif name != "port" and name not in _ZERO_ALLOWED and number <= 0:
            issues.append(at.issue(key, f"must be greater than 0, found {number}"))
    for port, _kind in config.discovery.ports:
        if not 1 <= port <= MAX_PORT:
            issues.append(
                at.issue(f"discovery.ports.{port}", f"{port} is not a port number from 1 to {MAX_PORT}")
            )

    shutdown = config.shutdown
    if shutdown.force_exit_seconds <= shutdown.drain_timeout_seconds:
        issues.append(
            at.issue(
                "shutdown.force_exit_seconds",
                f"force_exit_seconds ({shutdown.force_exit_seconds}) must be greater than "
                f"drain_timeout_seconds ({shutdown.drain_timeout_seconds})",
                "the forced exit is the last resort after the drain: give the drain time to finish first",
            )
        )
    if config.logging.level not in LOG_LEVELS:
        level = config.logging.level
        hint = _did_you_mean(level.lower(), list(LOG_LEVELS)) or f"valid levels: {', '.join(LOG_LEVELS)}"
        issues.append(at.issue("logging.level", f"'{level}' is not one of: {', '.join(LOG_LEVELS)}", hint))

    instance = config.server.instance_name
    if instance is not None and not _INSTANCE_NAME.fullmatch(instance):
        issues.append(
            at.issue(
                "server.instance_name",
                f"{instance!r} is not a usable instance name",
                "use 1 to 200 printable ASCII characters (letters, digits, '.', ':', '-', '_'...), "
                "or null for host:port",
            )
        )
    issues += [at.issue(key, message, hint) for key, message, hint in access_problems(config)]
    issues += _backend_issues(config.backends, at)
    issues += _managed_issues(config, at)
    issues += _route_issues(config, at)
    return issues


def _backend_issues(backends: tuple[Backend, ...], at: _Locations) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    first_index: dict[str, int] = {}
    for i, backend in enumerate(backends):
        key = f"backends[{i}]"
        if not _BACKEND_ID.fullmatch(backend.id):
            hint = "use letters, digits, '.', '_' and '-', starting with a letter or digit"
            issues.append(at.issue(f"{key}.id", f"invalid backend id '{backend.id}'", hint))
        elif backend.id in first_index:
            message = f"duplicate backend id '{backend.id}' (also backends[{first_index[backend.id]}])"
            issues.append(at.issue(f"{key}.id", message, "each backend needs its own id"))
        else:
            first_index[backend.id] = i
        if not backend.url and not backend.managed:
            hint = "give its url, or a command: for gatewayd to run it (see 'gatewayd init')"
            issues.append(at.issue(key, "missing required key 'url'", hint))
            continue
        url_problem = _url_problem(backend.url.replace(PORT_PLACEHOLDER, "1")) if backend.url else None
        if url_problem:
            hint = "for example http://127.0.0.1:8080 or https://api.example.com/v1"
            issues.append(at.issue(f"{key}.url", url_problem, hint))
        if backend.api_key is not None and _has_userinfo(backend.url):
            hint = (
                "keep one: remove 'user:password@' from the url to send api_key as a Bearer token, or "
                "remove api_key to send the url's user and password as Basic auth"
            )
            message = (
                f"backend '{backend.id}': the url carries a user and password and api_key is set too; "
                "both would be its Authorization header"
            )
            issues.append(at.issue(f"{key}.url", message, hint))
        if backend.models == ():
            hint = "list the models it serves, or remove models: to discover them from the backend"
            issues.append(at.issue(f"{key}.models", "the list of models is empty", hint))
    return issues


def _managed_issues(config: Config, at: _Locations) -> list[ConfigIssue]:
    """Managed and wakeable backends, and the exclusive groups they run in."""
    issues: list[ConfigIssue] = []
    groups: dict[str, int] = {}
    for i, group in enumerate(config.groups):
        if group.name in groups:
            message = f"duplicate group '{group.name}' (also groups[{groups[group.name]}])"
            issues.append(at.issue(f"groups[{i}].name", message))
        groups.setdefault(group.name, i)
    for i, backend in enumerate(config.backends):
        key = f"backends[{i}]"
        if backend.command is not None and not backend.command:
            issues.append(at.issue(f"{key}.command", "the command is empty", "give the server's argv"))
        if PORT_PLACEHOLDER in backend.url and not backend.managed:
            hint = f"{PORT_PLACEHOLDER} is the port gatewayd picks for a server it runs (command:)"
            issues.append(
                at.issue(f"{key}.url", f"{PORT_PLACEHOLDER} in the url of a backend with no command", hint)
            )
        if backend.managed and backend.wake is not None:
            hint = "wake: is for servers gatewayd does not run; a managed one is started by its command"
            issues.append(at.issue(f"{key}.wake", "a backend with a command needs no wake action", hint))
        if backend.wakeable and backend.models is None:
            hint = "list the models it serves: gatewayd cannot ask a sleeping server"
            issues.append(at.issue(key, "a managed or wakeable backend must declare models:", hint))
        if backend.stop_signal not in _SIGNALS:
            hint = _did_you_mean(backend.stop_signal, list(_SIGNALS)) or "for example SIGTERM or SIGINT"
            issues.append(
                at.issue(f"{key}.stop_signal", f"'{backend.stop_signal}' is not a signal name", hint)
            )
        if backend.model_path is not None and MODEL_PATH_PLACEHOLDER not in " ".join(backend.command or ()):
            hint = f"use {MODEL_PATH_PLACEHOLDER} in command: where the server expects the model file"
            issues.append(
                at.issue(f"{key}.model_path", "model_path is set but the command never uses it", hint)
            )
        for placeholder in _PLACEHOLDER.findall(" ".join(backend.command or ())):
            if placeholder not in PLACEHOLDERS:
                hint = _did_you_mean(placeholder, list(PLACEHOLDERS)) or f"known: {', '.join(PLACEHOLDERS)}"
                issues.append(at.issue(f"{key}.command", f"unknown placeholder {placeholder}", hint))
        if MODEL_PATH_PLACEHOLDER in " ".join(backend.command or ()) and backend.model_path is None:
            issues.append(
                at.issue(key, f"the command uses {MODEL_PATH_PLACEHOLDER} but model_path is not set")
            )
        if backend.group is not None:
            if backend.group not in groups:
                names = list(groups)
                hint = _did_you_mean(backend.group, names) or "declare it under groups: (name, max_running)"
                issues.append(at.issue(f"{key}.group", f"unknown group '{backend.group}'", hint))
            if not backend.managed:
                issues.append(at.issue(f"{key}.group", "only a backend with a command can be in a group"))
            if backend.always_on:
                hint = "an always-on backend never sleeps, so it cannot give way in a group"
                issues.append(at.issue(f"{key}.always_on", "always_on and group exclude each other", hint))
        if backend.always_on and not backend.managed:
            issues.append(at.issue(f"{key}.always_on", "only a backend with a command can be always on"))
        if backend.wake is not None and backend.wake.url is None and backend.wake.command is None:
            issues.append(at.issue(f"{key}.wake", "the wake action needs a url:, a command: or both"))
    return issues


def _has_userinfo(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False  # reported as an invalid url
    return parts.username is not None or parts.password is not None


def _short_secret_warnings(config: Config, at: _Locations) -> list[ConfigIssue]:
    """Warnings (not errors: a short key still works) for secrets short enough to guess."""
    secrets: list[tuple[str, str, str | None]] = [
        (f"keys[{i}].key", f"key '{k.name}'", k.key) for i, k in enumerate(config.keys)
    ]
    secrets.append(("auth.admin_token", "the admin token", config.auth.admin_token))
    warnings: list[ConfigIssue] = []
    for key, what, secret in secrets:
        if secret is not None and len(secret) < MIN_SECRET_CHARS:
            message = f"{what} is {len(secret)} characters long, under {MIN_SECRET_CHARS}: easy to guess"
            hint = "use a long random value, e.g. one printed by 'openssl rand -hex 24'"
            warnings.append(at.issue(key, message, hint))
    return warnings


def _url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises for a port that is not a number in range
    except ValueError as error:
        return f"invalid url: {error}"
    if parts.scheme not in ("http", "https"):
        return "the url must start with http:// or https://"
    if not parts.hostname:
        return "the url names no host"
    return None


def _route_issues(config: Config, at: _Locations) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    backends: dict[str, Backend] = {}
    for declared in config.backends:
        backends.setdefault(declared.id, declared)  # a duplicate id is reported; targets reach the first
    first_index: dict[str, int] = {}
    for i, route in enumerate(config.routes):
        key = f"routes[{i}]"
        if not route.model:
            issues.append(at.issue(f"{key}.model", "the model name must not be empty"))
        elif route.model in first_index:
            message = f"duplicate route for model '{route.model}' (also routes[{first_index[route.model]}])"
            issues.append(at.issue(f"{key}.model", message, "list every backend for a model in one route"))
        else:
            first_index[route.model] = i
        if not route.targets:
            hint = "add at least one target: a backend id, or {backend: ID, model: NAME}"
            issues.append(at.issue(f"{key}.targets", "a route needs at least one target", hint))
        for j, target in enumerate(route.targets):
            target_key = f"{key}.targets[{j}]"
            backend = backends.get(target.backend)
            if backend is None:
                hint = _did_you_mean(target.backend, list(backends)) or (
                    f"declared backends: {', '.join(backends)}" if backends else "no backends are declared"
                )
                issues.append(at.issue(f"{target_key}.backend", f"unknown backend '{target.backend}'", hint))
                continue
            model = target.model or route.model
            if backend.models is not None and model not in backend.models:
                message = (
                    f"unreachable: backend '{backend.id}' declares the models {', '.join(backend.models)} "
                    f"and '{model}' is not among them"
                )
                hint = f"add '{model}' to its models, or set this target's model: to one of them"
                located = f"{target_key}.model" if target.model else f"{target_key}.backend"
                issues.append(at.issue(located, message, hint))
    return issues


def _numbers(value: object, key: str) -> Iterator[tuple[str, str, float]]:
    """(key path, field name, number) for every int and float setting in ``value``, nested ones included."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return
    for field in dataclasses.fields(value):
        item = getattr(value, field.name)
        item_key = _join(key, field.name)
        if isinstance(item, tuple):
            for i, element in enumerate(item):
                yield from _numbers(element, f"{item_key}[{i}]")
        elif dataclasses.is_dataclass(item):
            yield from _numbers(item, item_key)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            yield item_key, field.name, item


# -- 5. and 6. environment overrides ----------------------------------------------------------------------


def _env_host(environ: Mapping[str, str]) -> str | None:
    host = environ.get(HOST_ENV, "").strip()
    return host or None


def _apply_environment(config: Config, environ: Mapping[str, str]) -> tuple[Config, list[ConfigIssue]]:
    """``config`` with GATEWAYD_HOST / GATEWAYD_PORT applied. A value that cannot be used is ignored and
    returned as a warning: a stray variable must not stop a service from starting."""
    warnings: list[ConfigIssue] = []
    server = config.server
    host = _env_host(environ)
    if host is not None and (is_loopback_host(host) or config.auth.mode is AuthMode.KEYS):
        server = dataclasses.replace(server, host=host)
    elif host is not None:
        message, hint = _public_host_problem(host)
        warnings.append(ConfigIssue(HOST_ENV, f"{message}; ignored", key="server.host", hint=hint))
    elif HOST_ENV in environ:
        warnings.append(
            ConfigIssue(HOST_ENV, "is empty; ignored", key="server.host", hint=f"unset {HOST_ENV}")
        )
    port_text = environ.get(PORT_ENV)
    if port_text is not None:
        port = int(port_text) if re.fullmatch(r"\s*[0-9]{1,5}\s*", port_text) else None
        if port is not None and port <= MAX_PORT:
            server = dataclasses.replace(server, port=port)
        else:
            message = f"{port_text!r} is not a port number from 0 to {MAX_PORT}; ignored"
            warnings.append(
                ConfigIssue(PORT_ENV, message, key="server.port", hint=f"set a number or unset {PORT_ENV}")
            )
    return dataclasses.replace(config, server=server), warnings


def _public_host_problem(host: str) -> tuple[str, str]:
    """(message, hint) for a listen host that is not loopback while auth is off."""
    return (
        f"host '{host}': listening on a public address requires authentication, and auth.mode is off",
        "set auth.mode: keys (and create keys with 'gatewayd keys create'), or keep host 127.0.0.1",
    )


# -- diagnostics ------------------------------------------------------------------------------------------


def _plain_fields(instance: Any) -> dict[str, object]:
    plain: dict[str, object] = {}
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        if field.name in _SECRET_FIELDS and value is not None:
            plain[field.name] = REDACTED
        elif isinstance(instance, StoreSettings) and field.name == "url" and value is not None:
            plain[field.name] = redact_url(value)
        else:
            plain[field.name] = _plain(value)
    return plain


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain_fields(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value
