"""Extension-point registries: implementations found by name, one module per implementation.

A registry belongs to a package (model kinds, feedback strategies, acquisition functions). A
class registers itself when its module is imported (``Registry.add`` from ``__init_subclass__``),
and the registry imports every module of its package the first time it is asked, so adding an
implementation is adding one file.
"""
from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import Generic, TypeVar

from ml_backend.config import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> class for one extension point."""

    def __init__(self, package: str, what: str) -> None:
        self.package, self.what = package, what
        self._classes: dict[str, type[T]] = {}
        self._discovered = False
        self._lock = threading.Lock()

    def add(self, name: str, cls: type[T]) -> None:
        existing = self._classes.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"two {self.what}s are named {name!r}: {existing.__qualname__} and {cls.__qualname__}")
        self._classes[name] = cls

    def discover(self) -> None:
        """Import every module of the package once (each registers its classes)."""
        if self._discovered:
            return
        with self._lock:
            if self._discovered:
                return
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{self.package}.{module.name}")
            self._discovered = True

    def get(self, name: str) -> type[T]:
        self.discover()
        try:
            return self._classes[name]
        except KeyError:
            raise ConfigError(f"unknown {self.what} {name!r}; known: {', '.join(self.names())}") from None

    def names(self) -> tuple[str, ...]:
        self.discover()
        return tuple(sorted(self._classes))

    def classes(self) -> list[type[T]]:
        self.discover()
        return [self._classes[n] for n in sorted(self._classes)]
