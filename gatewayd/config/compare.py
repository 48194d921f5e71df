"""Two configs side by side: what a reload changes, and whether it lowers protection. Pure functions.

``changes(old, new)`` is the summary ``gatewayd restart`` prints (backends, routes and keys added, removed
or changed, by name; never a value, since values may be secrets). ``weakenings(old, new)`` lists every way
``new`` protects less than ``old``: the reload refuses them unless asked on purpose. Each protection rule is
one function ``(old, new) -> reason | None`` in ``PROTECTION_RULES``; adding a rule is one line there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from gatewayd.config.schema import AuthMode, Config


@dataclass(frozen=True, slots=True)
class NameChanges:
    """Names of the items of one kind (backend ids, route models, key names) that a reload adds, removes or
    changes, each in the order the config lists them."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


@dataclass(frozen=True, slots=True)
class ConfigChanges:
    """What a reload changes. ``settings``: the other top-level sections whose values differ."""

    backends: NameChanges = NameChanges()
    routes: NameChanges = NameChanges()
    keys: NameChanges = NameChanges()
    settings: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.backends or self.routes or self.keys or self.settings)

    def to_json(self) -> dict[str, object]:
        named: dict[str, object] = {
            kind: {part: list(getattr(getattr(self, kind), part)) for part in ("added", "removed", "changed")}
            for kind in _NAMED
        }
        return {**named, "settings": list(self.settings)}

    @classmethod
    def from_json(cls, value: object) -> ConfigChanges | None:
        """The changes stored as ``value``, or None if it is malformed."""
        if not isinstance(value, dict):
            return None
        try:
            named = {
                kind: NameChanges(**{part: _strings(names) for part, names in value[kind].items()})
                for kind in _NAMED
            }
            return cls(**named, settings=_strings(value["settings"]))
        except (KeyError, TypeError, AttributeError):
            return None


T = TypeVar("T")
_NAMED = ("backends", "routes", "keys")
#: Config fields that are not settings of their own (``source`` is where it came from)
_NOT_SETTINGS = frozenset({*_NAMED, "source"})


def changes(old: Config, new: Config) -> ConfigChanges:
    """What going from ``old`` to ``new`` changes."""
    settings = tuple(
        f.name
        for f in dataclasses.fields(Config)
        if f.name not in _NOT_SETTINGS and getattr(old, f.name) != getattr(new, f.name)
    )
    return ConfigChanges(
        backends=_by_name(old.backends, new.backends, lambda backend: backend.id),
        routes=_by_name(old.routes, new.routes, lambda route: route.model),
        keys=_by_name(old.keys, new.keys, lambda key: key.name),
        settings=settings,
    )


def _by_name(old: Iterable[T], new: Iterable[T], name: Callable[[T], str]) -> NameChanges:
    before: Mapping[str, T] = {name(item): item for item in old}
    after: Mapping[str, T] = {name(item): item for item in new}
    return NameChanges(
        added=tuple(n for n in after if n not in before),
        removed=tuple(n for n in before if n not in after),
        changed=tuple(n for n in after if n in before and before[n] != after[n]),
    )


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return tuple(str(item) for item in value)


# -- protection ---------------------------------------------------------------------------------------

#: a protection rule: why ``new`` protects less than ``old`` in one respect, or None
ProtectionRule = Callable[[Config, Config], str | None]


def _auth_turned_off(old: Config, new: Config) -> str | None:
    if old.auth.mode is AuthMode.KEYS and new.auth.mode is not AuthMode.KEYS:
        return "auth.mode goes from keys to off: every request would be served without a key"
    return None


def _admin_api_opened(old: Config, new: Config) -> str | None:
    # Without a token the admin API is open to loopback clients while auth is off, and disabled while auth
    # is keys: removing the token lowers protection only in the first case.
    was_guarded = old.auth.admin_token is not None or old.auth.mode is AuthMode.KEYS
    if was_guarded and new.auth.admin_token is None and new.auth.mode is AuthMode.OFF:
        return (
            "auth.admin_token is removed while auth is off: the admin API (keys, backends, reload) would "
            "be open to every local client without a token"
        )
    return None


def widened(name: str, values: Callable[[Config], Iterable[str]]) -> ProtectionRule:
    """A rule for a setting that lists what is let in (hosts, origins): anything added lowers protection.
    For example ``widened("server.allowed_hosts", lambda config: config.server.allowed_hosts)``."""

    def rule(old: Config, new: Config) -> str | None:
        before = set(values(old))
        added = [value for value in values(new) if value not in before]
        return f"{name} now also lets in {', '.join(added)}" if added else None

    return rule


def _wildcards(values: Iterable[str]) -> list[str]:
    return [value for value in values if value == "*"]


#: every rule a reload is checked against, in the order their reasons are reported. Adding a named host or
#: origin is the operator's explicit choice and reloads as usual; adding the ``"*"`` that lets in every web
#: page (or every Host name) lowers protection for all of them at once.
PROTECTION_RULES: tuple[ProtectionRule, ...] = (
    _auth_turned_off,
    _admin_api_opened,
    widened("server.cors_origins", lambda config: _wildcards(config.server.cors_origins)),
    widened("server.allowed_hosts", lambda config: _wildcards(config.server.allowed_hosts)),
)


def weakenings(old: Config, new: Config) -> list[str]:
    """Every way ``new`` protects less than ``old`` (empty: it protects at least as much)."""
    return [reason for rule in PROTECTION_RULES if (reason := rule(old, new)) is not None]
