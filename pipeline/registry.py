"""A name -> plug-in registry, filled by a class decorator in the modules of one package.

`backends` and `paradigms` each hold one (lm-evaluation-harness keeps its models and tasks the
same way): a module registers its class with `@register("name")`, and the package's modules
are imported the first time the registry is asked, so adding a plug-in is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, TypeVar

from .errors import PipelineError

T = TypeVar("T")


class Registry(Generic[T]):
    """The plug-ins of `package`, by name.

    Args:
        package: the package whose modules register (its ``base`` module is not imported here).
        kind: what a plug-in is called in messages (``backend``, ``paradigm``).
        make: what the registry keeps of a registered class (the class itself, or an instance).
    """

    def __init__(self, package: str, kind: str, make: Callable[[type], T] = lambda cls: cls):
        self.package, self.kind, self._make = package, kind, make
        self._entries: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str):
        """Class decorator: the class becomes `name` (its ``name`` attribute) in this registry."""
        def deco(cls):
            cls.name = name
            self._entries[name] = self._make(cls)
            return cls
        return deco

    @property
    def entries(self) -> dict[str, T]:
        """Every registered plug-in by name, after importing the package's modules once."""
        if not self._discovered:
            for info in pkgutil.iter_modules(importlib.import_module(self.package).__path__):
                if info.name != "base":
                    importlib.import_module(f"{self.package}.{info.name}")
            self._discovered = True
        return self._entries

    def names(self) -> list[str]:
        """Registered names, by the plug-ins' ``rank`` (the production or the paper's first), then name."""
        e = self.entries
        return sorted(e, key=lambda n: (e[n].rank, n))

    def get(self, name: str, where: str = "") -> T:
        """The plug-in registered as `name`.

        Raises:
            PipelineError: no such plug-in; names the registered ones (`where` says which key asked).
        """
        if name not in self.entries:
            raise PipelineError(f"unknown {self.kind} '{name}'{where}; use one of {', '.join(self.names())}")
        return self._entries[name]

    def find(self, name: str) -> T | None:
        """The plug-in registered as `name`, or None."""
        return self.entries.get(name)
