"""Which backends serve which public model names: routes first, then declared and discovered models."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gatewayd.config import Route
from gatewayd.gateway.core.metadata import ModelInfo


@dataclass(frozen=True, slots=True)
class Target:
    """One way to serve a public model: a backend and the model name that backend knows."""

    backend: str
    model: str
    #: position in the route's ordered list (0 = primary); 0 for every backend found by model name
    priority: int = 0


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A public model name and where it is served, for listings."""

    name: str
    targets: tuple[Target, ...]
    routed: bool  #: True when a configured route defines it


def _aliases(name: str) -> tuple[str, ...]:
    """Ollama treats "llama3" and "llama3:latest" as one model."""
    if name.endswith(":latest"):
        return (name, name.removesuffix(":latest"))
    if ":" not in name:
        return (name, f"{name}:latest")
    return (name,)


class Inventory:
    """Model name -> ordered targets. Rebuilt in place when a backend's discovered model list changes.

    Backends appear in ``backend_order`` (the config's order); a backend that declares ``models`` serves
    exactly those, one that does not serves what discovery last found on it."""

    def __init__(
        self,
        *,
        routes: Sequence[Route],
        backend_order: Sequence[str],
        declared: Mapping[str, tuple[str, ...] | None],
    ) -> None:
        self._routes = tuple(routes)
        self._order = tuple(backend_order)
        self._declared = dict(declared)
        self._discovered: dict[str, tuple[str, ...]] = {}
        #: per backend, what its model listing said about each model (replaced at every listing)
        self._listed: dict[str, Mapping[str, ModelInfo]] = {}
        #: per backend, what it told about a model when asked (/api/show, /props): fetched once per model
        #: (again when its digest changes), kept while the backend lists the model
        self._described: dict[str, dict[str, ModelInfo]] = {}
        self._index: dict[str, tuple[Target, ...]] = {}
        self._entries: list[ModelEntry] = []
        self._rebuild()

    def add_backend(self, backend: str, declared: tuple[str, ...] | None = None) -> None:
        """A backend found at run time (discovery). Idempotent."""
        if backend not in self._declared:
            self._order = (*self._order, backend)
            self._declared[backend] = declared
            self._rebuild()

    def remove_backend(self, backend: str) -> None:
        if backend in self._declared:
            self._order = tuple(b for b in self._order if b != backend)
            del self._declared[backend]
            self._discovered.pop(backend, None)
            self._listed.pop(backend, None)
            self._described.pop(backend, None)
            self._rebuild()

    def set_discovered(self, backend: str, models: Iterable[str]) -> bool:
        """Record the models a backend reported. Returns True when that changed the inventory."""
        found = tuple(dict.fromkeys(models))
        described = self._described.get(backend)
        if described is not None:
            self._described[backend] = {m: info for m, info in described.items() if m in found}
        if self._discovered.get(backend) == found:
            return False
        self._discovered[backend] = found
        if self._declared.get(backend) is None:
            self._rebuild()
            return True
        return False

    def targets(self, model: str) -> tuple[Target, ...]:
        """Ordered targets for a public model name; empty when nothing serves it."""
        found = self._index.get(model)
        if found is not None:
            return found
        for alias in _aliases(model)[1:]:
            found = self._index.get(alias)
            if found is not None:
                return found
        return ()

    def served_by(self, backend: str) -> tuple[str, ...]:
        models = self._declared.get(backend)
        return models if models is not None else self._discovered.get(backend, ())

    def set_listed_info(self, backend: str, info: Mapping[str, ModelInfo]) -> None:
        """What the backend's latest model listing said about its models."""
        self._listed[backend] = dict(info)

    def set_described(self, backend: str, model: str, info: ModelInfo) -> None:
        """What the backend told about one model when asked. Kept with the digest it was listed with."""
        listed = self._listed.get(backend, {}).get(model)
        digest = listed.digest if listed is not None else None
        self._described.setdefault(backend, {})[model] = ModelInfo(digest=digest).merged(info)

    def undescribed(self, backend: str, models: Iterable[str]) -> list[str]:
        """Those of ``models`` the backend has not been asked about yet, or whose digest changed since."""
        described = self._described.get(backend, {})
        listed = self._listed.get(backend, {})
        stale = []
        for model in models:
            known = described.get(model)
            now = listed.get(model)
            if known is None or (now is not None and now.digest != known.digest):
                stale.append(model)
        return stale

    def info(self, backend: str, model: str) -> ModelInfo | None:
        """What ``backend`` said about ``model``: its description first, then its listing; None when it
        said nothing."""
        described = self._described.get(backend, {}).get(model)
        listed = self._listed.get(backend, {}).get(model)
        if described is None:
            return listed
        return described.merged(listed)

    def describe(self, name: str) -> ModelInfo | None:
        """What the backends of a public model name said about it: the first target (in routing order)
        whose backend said anything."""
        for target in self.targets(name):
            found = self.info(target.backend, target.model)
            if found is not None:
                return found
        return None

    def entries(self) -> list[ModelEntry]:
        """Every public model, routes first (config order), then served models by name."""
        return list(self._entries)

    def _rebuild(self) -> None:
        index: dict[str, list[Target]] = {}
        for backend in self._order:
            for model in self.served_by(backend):
                index.setdefault(model, []).append(Target(backend, model))
        served = {name: tuple(targets) for name, targets in index.items()}
        routed: dict[str, tuple[Target, ...]] = {}
        for route in self._routes:
            routed[route.model] = tuple(
                Target(t.backend, t.model or route.model, rank) for rank, t in enumerate(route.targets)
            )
        self._index = {**served, **routed}
        self._entries = [ModelEntry(name, targets, True) for name, targets in routed.items()] + [
            ModelEntry(name, served[name], False) for name in sorted(served) if name not in routed
        ]
