"""Adapters: published foundation potentials (CHGNet, SevenNet-0) as gffmerge force fields.

An adapter wraps a third-party package's model in a :class:`~gffmerge.models.ForceField`
(:class:`Foreign`), so everything gffmerge does to its own models applies unchanged:
:func:`gffmerge.measure` (energy-only forward), every merge method, the progressive merge
with tangent rows, :func:`gffmerge.evaluate.evaluate`, :func:`gffmerge.train.train`. The
wrapper builds the package's own graphs from gffmerge's batches (its own graph builder,
cached per frame) and runs the package's own layers; the total energy is the package's
site energies plus gffmerge's per-element reference energies (``atomic_energies``), which
absorb the package's own composition model and, after :meth:`Adapter.fit_references`,
the offset of the data's DFT energies. :meth:`Adapter.export` writes a model back in the
package's own format, references folded into its composition model, for its own loader
and ASE calculator.

One file per adapter, registered with :func:`register_adapter`; each needs its package
(the optional extras ``gffmerge[chgnet]``, ``gffmerge[sevenn]``). The adapters' model
classes enter the checkpoint registry (:data:`gffmerge.models.MODELS`) only when
:func:`enable` is called (every :meth:`Adapter.foundation` does), so a gffmerge without
the extras sees no model it cannot build.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..discover import import_submodules
from ..errors import GffmergeError
from ..models.base import ForceField
from ..models.reference import fit_reference_energies
from ..models.registry import MODELS, register_model


class MissingExtraError(GffmergeError, ImportError):
    """An adapter's package is not installed."""


class Foreign(ForceField):
    """Base class of a foreign model wrapped as a gffmerge force field.

    Subclasses hold the package's network as ``self.net`` (so its parameters are the
    state-dict entries ``net.*``), implement :meth:`atomwise` (per-atom energies in eV,
    the package's own composition model left out) and set ``conservative = True``.
    """

    adapter: ClassVar[str] = ""
    # the progressive search tries one staged merge (at the best one-shot anchor) instead
    # of a grid: a forward of these models costs 10-100x a gffmerge model's
    staged_search: ClassVar[str] = "one"


_ADAPTERS: dict[str, Adapter] = {}


class Adapter(ABC):
    """How gffmerge loads, runs and writes back one package's foundation model.

    ``name`` is the ``--foundation`` name (``"chgnet"``, ``"sevenn-0"``), ``package`` the
    import name of the package, ``extra`` the gffmerge extra that installs it and
    ``default_variant`` the weights :meth:`foundation` loads by default.
    """

    name: ClassVar[str] = ""
    package: ClassVar[str] = ""
    extra: ClassVar[str] = ""
    model_class: ClassVar[type[Foreign]]
    default_variant: ClassVar[str] = ""

    # -- availability
    def available(self) -> bool:
        """Whether the package is installed."""
        return importlib.util.find_spec(self.package) is not None

    def require(self) -> None:
        """Raise :class:`MissingExtraError` (one line naming the fix) without the package."""
        if not self.available():
            raise MissingExtraError(f"the {self.name} adapter needs the '{self.package}' "
                                    f"package: pip install 'gffmerge[{self.extra}]'")

    # -- the model
    def foundation(self, variant: str | None = None) -> Foreign:
        """The package's pre-trained model (offline, from the weights its wheel ships),
        wrapped; energies equal the package's own (composition model included).
        ``variant`` (default :attr:`default_variant`) names the package's weights."""
        enable(self.name)
        return self.model_class(variant or self.default_variant).eval()

    @abstractmethod
    def export(self, model: Foreign, path: str | Path) -> Path:
        """Write ``model`` in the package's own checkpoint format; returns the path."""

    @abstractmethod
    def load_native(self, path: str | Path) -> Any:
        """The package's own model object, loaded by the package from ``path``."""

    @abstractmethod
    def calculator(self, path: str | Path) -> Any:
        """The package's own ASE calculator on the checkpoint at ``path``."""

    # -- shared steps
    def fit_references(self, model: Foreign, batches) -> dict[int, float]:
        """Shift ``model.atomic_energies`` by the minimum-norm least-squares per-element fit
        of (reference energy − model energy) over ``batches`` (labelled
        :class:`~gffmerge.data.AtomsBatch` es). Forces are unchanged. A foundation trained on
        other DFT settings than the data needs this before any energy is comparable.
        Returns the shifts in eV by atomic number."""
        rows = []
        was = model.training
        model.eval()
        with torch.no_grad():
            for batch in batches:
                energy = model(batch, compute_forces=False)["energy"]
                for g in range(batch.num_graphs):
                    z = batch.z[batch.batch == g]
                    rows.append((z.cpu(), float(batch.energy[g] - energy[g])))
        model.train(was)
        fit = fit_reference_energies(rows, max_z=model.max_z)
        delta = fit.atomic_energies
        with torch.no_grad():
            model.atomic_energies += delta.to(model.atomic_energies)
        return {int(z): float(delta[z]) for z in torch.nonzero(delta).flatten().tolist()}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: register an :class:`Adapter` under its ``name``."""
    if not cls.name or cls.name in _ADAPTERS and type(_ADAPTERS[cls.name]) is not cls:
        raise ValueError(f"adapter name {cls.name!r} is empty or already taken")
    _ADAPTERS[cls.name] = cls()
    return cls


def names() -> list[str]:
    """The registered adapter names (whether or not their packages are installed)."""
    return sorted(_ADAPTERS)


def get(name: str) -> Adapter:
    """The adapter registered as ``name``; a one-line ``KeyError`` listing them if none."""
    try:
        return _ADAPTERS[name]
    except KeyError:
        raise KeyError(f"unknown foundation adapter {name!r}; adapters: "
                       f"{', '.join(names())}") from None


def enable(name: str) -> Adapter:
    """The adapter ``name`` with its package checked and its model class in the checkpoint
    registry, so :func:`gffmerge.checkpoint.load_checkpoint` can rebuild its models."""
    adapter = get(name)
    adapter.require()
    cls = adapter.model_class
    if MODELS.get(cls.name) is not cls:
        register_model(cls)
    return adapter


@contextlib.contextmanager
def quiet():
    """Silence what a package prints on load (banners, device notes)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield



def foundation_checkpoint(name: str, systems: list[str], folder: str | Path, *,
                          seed: int = 42, max_frames: int | None = 1250,
                          frames: int = 64, batch_size: int = 8) -> Path:
    """A gffmerge checkpoint of adapter ``name``'s foundation with its reference energies
    fitted to ``systems`` (:meth:`Adapter.fit_references` on up to ``frames`` training
    frames, spread evenly over the systems), for runs that start from a checkpoint file
    (``gffmerge experiment --foundation chgnet``). Written to ``folder`` once and reused
    while the systems, seed and frames are the same."""
    from ..checkpoint import load_checkpoint, save_checkpoint
    from ..data import load_dataset
    from ..train import balanced_subset

    adapter = enable(name)
    recipe = {"adapter": name, "systems": [str(s) for s in systems], "seed": seed,
              "max_frames": max_frames, "reference_frames": frames}
    path = Path(folder) / f"foundation_{name}.pt"
    if path.is_file() and load_checkpoint(path)[1].get("adapter_recipe") == recipe:
        return path
    model = adapter.foundation()
    data = load_dataset(list(systems), max_frames=max_frames, seed=seed)
    train = balanced_subset(data.split("train"), frames, seed)
    shifts = adapter.fit_references(model, train.batches_for(model, batch_size))
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, model, {"role": "foundation", "adapter_recipe": recipe,
                                         "reference_shift_ev": {str(z): v for z, v in
                                                                shifts.items()}})


def enable_for(path: str | Path) -> bool:
    """Enable the adapter whose model a gffmerge checkpoint at ``path`` holds, if any (so
    that :func:`gffmerge.checkpoint.load_checkpoint` can rebuild it); False if none does."""
    try:
        payload = torch.load(path, map_location="meta", weights_only=True)
        model_name = payload.get("model_name") if isinstance(payload, dict) else None
    except Exception:  # not a checkpoint: load_checkpoint reports it
        return False
    return enable_model(model_name)


def enable_model(model_name: Any) -> bool:
    """Enable the adapter whose model class is called ``model_name``; False if none is.
    A missing package raises :class:`MissingExtraError` naming the extra to install."""
    for adapter in _ADAPTERS.values():
        if adapter.model_class.name == model_name:
            enable(adapter.name)
            return True
    return False


import_submodules(__name__, __path__)

__all__ = ["Adapter", "Foreign", "MissingExtraError", "enable", "enable_for", "enable_model",
           "foundation_checkpoint", "get", "names", "quiet", "register_adapter"]
