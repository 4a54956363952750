"""Import every module of a package folder, so that the decorators in each file register.

Models, data readers and merge methods are open registries: adding one is one new file in
its folder, found here without an import list to edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable


def import_submodules(package: str, path: Iterable[str], *,
                      skip: Iterable[str] = ()) -> list[str]:
    """Import ``package.<name>`` for every module in ``path`` (a package's ``__path__``).

    Names starting with ``_`` and those in ``skip`` are left out. Returns the names imported.
    """
    skipped = set(skip)
    names = [m.name for m in pkgutil.iter_modules(list(path))
             if not m.name.startswith("_") and m.name not in skipped]
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names
