"""Discovery of self-registering sibling modules (methods, decoding strategies, scorers)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Records keyed by name; `discover()` imports every module of a package so each can register."""

    def __init__(self, package: str, what: str):
        self._package = package
        self._what = what
        self._records: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str, record: T) -> T:
        """Add a record; a duplicate name is a programming error."""
        if name in self._records:
            raise RuntimeError(f"{self._what} {name!r} registered twice")
        self._records[name] = record
        return record

    def discover(self) -> dict[str, T]:
        """Import every module in the package once; return the records sorted by name."""
        if not self._discovered:
            package = importlib.import_module(self._package)
            for info in pkgutil.iter_modules(package.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self._package}.{info.name}")
            self._discovered = True
        return dict(sorted(self._records.items()))

    def get(self, name: str) -> T:
        """The record registered under `name`."""
        return self.discover()[name]
