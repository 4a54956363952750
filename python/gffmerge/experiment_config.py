"""What one ``gffmerge experiment`` is asked to do: :class:`ExperimentConfig`, checked before
any work, and the foundation it starts from (:func:`resolve_foundation`)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import methods
from .provenance import file_sha256

RESULT_METRICS = ("energy_mae_mev_per_atom", "force_mae_mev_per_a", "force_rmse_mev_per_a")
FINETUNE_LR = 5e-4  # the shipped recipes' fine-tuning rate (gffmerge.recipes)

@dataclass
class ExperimentConfig:
    """Everything that defines one experiment (recorded in ``results.json``'s command)."""

    foundation: str | None  # None: the shipped foundation of model_kind (see resolve_foundation)
    systems: list[str]
    out: str
    model_kind: str | None = None  # gns, painn, schnet: the foundation's architecture
    methods: list[str] | None = None  # None: every registered method
    train_frames: int = 400  # training frames per system, fine-tunes and joint alike
    epochs: int = 10  # fine-tune and joint epochs
    seed: int = 42
    repair: bool = False
    switch: bool = False  # also rows <method>+switch for the default and the paper recipe
    repair_frames: int = 250
    repair_epochs: int = 5
    # epochs of each start's probe before the repair (the default's pick and the best of
    # every other family its search scored); 0: repair the default's pick only
    repair_probe_epochs: int = 1
    # the repair's learning rate, or "auto": 5e-4 and 1e-3 probed from the chosen
    # start (2 * repair_probe_epochs, at least 2 epochs each), the best on validation used
    repair_lr: float | str = "auto"
    merge_frames: int = 200  # frames per source for statistics, Fisher and progressive
    grid_val_frames: int = 64  # validation frames per system scoring a grid point
    val_frames: int = 100  # validation frames per system during training (cap)
    batch_size: int = 8
    # frames per batch of the statistics passes; None: batch_size's frames, in batches of
    # about 1 024 atoms (collect.budget); given: those batches, up to merge_frames as before
    stats_batch_size: int | None = None
    max_frames: int = 1250  # frames sampled per system (protocol)
    # given fine-tunes (one per system, in --systems order) and joint model: used as they
    # are instead of being trained here (their seed must be this experiment's: see check_given)
    sources: list[str] | None = None
    joint: str | None = None
    method_names: list[str] = field(init=False, default_factory=list)

    def __post_init__(self):
        self.systems = [str(s) for s in self.systems]
        if len(self.systems) < 2:
            raise ValueError(f"an experiment merges at least 2 systems, got "
                             f"{len(self.systems)}: pass --systems A B [C ...]")
        if len(set(self.systems)) != len(self.systems):
            raise ValueError(f"--systems lists a system twice: {' '.join(self.systems)}")
        short = [system_label(s) for s in self.systems]
        if len(set(short)) != len(short):
            raise ValueError(f"two systems share the name {_first_repeat(short)!r}; rename "
                             "one of the files")
        for name in ("train_frames", "epochs", "repair_frames", "repair_epochs",
                     "merge_frames", "grid_val_frames", "val_frames", "batch_size",
                     "max_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got "
                                 f"{getattr(self, name)}")
        if self.repair_probe_epochs < 0:
            raise ValueError(f"repair-probe-epochs must be >= 0 (0: no probes), got "
                             f"{self.repair_probe_epochs}")
        if self.repair_lr != "auto" and not (isinstance(self.repair_lr, (int, float))
                                              and self.repair_lr > 0):
            raise ValueError(f"repair-lr must be a rate > 0 or 'auto', got {self.repair_lr!r}")
        if self.stats_batch_size is not None and self.stats_batch_size < 1:
            raise ValueError(f"stats-batch-size must be >= 1, got {self.stats_batch_size}")
        known = methods.available()
        chosen = list(known) if self.methods is None else list(self.methods)
        unknown = [m for m in chosen if m not in known]
        if unknown:
            raise ValueError(f"unknown merge method(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(known)} (gffmerge methods lists them)")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"--methods lists a method twice: {','.join(chosen)}")
        if self.repair and methods.DEFAULT_METHOD not in chosen:
            chosen.append(methods.DEFAULT_METHOD)  # the repair starts from the default
        self.method_names = chosen
        self.foundation = resolve_foundation(self.foundation, self.model_kind, self.systems)
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise ValueError(f"--out {self.out} is a file; give a folder")
        if self.sources is not None:
            self.sources = [str(p) for p in self.sources]
            if len(self.sources) != len(self.systems):
                raise ValueError(f"--sources gives {len(self.sources)} checkpoints for "
                                 f"{len(self.systems)} systems; give one fine-tune per "
                                 "system, in the order of --systems")
        self.joint = None if self.joint is None else str(self.joint)
        self.check_given()

    def given(self) -> list[tuple[str, str | None]]:
        """(checkpoint, system or None for the joint model) of every given model."""
        out = list(zip(self.sources or [], self.systems, strict=False))
        return out + ([(self.joint, None)] if self.joint else [])

    def check_given(self) -> None:
        """Refuse given fine-tunes or joint models that cannot be compared fairly here: a
        missing file, a model fine-tuned from another foundation, trained on other systems,
        or on another split seed (the hash split depends on the seed, so its training
        frames would be among this experiment's test frames)."""
        from .checkpoint import load_checkpoint
        from .lineage import check_shared_base

        for path, system in self.given():
            flag = "--sources" if system else "--joint"
            if not Path(path).is_file():
                raise FileNotFoundError(f"{flag} checkpoint not found: {path}")
            if self.foundation is None or not Path(self.foundation).is_file():
                raise ValueError(f"{flag} needs a foundation checkpoint of gffmerge's own "
                                 f"models; {self.foundation} is a foundation adapter")
            meta = load_checkpoint(path)[1]
            check_shared_base(self.foundation, [(path, meta)], flag="--foundation")
            trained_on = (meta.get("config") or {}).get("systems")
            wanted = [system] if system else list(self.systems)
            if trained_on is not None and sorted(map(str, trained_on)) != sorted(wanted):
                raise ValueError(f"{flag} {path} was trained on {', '.join(trained_on)}, "
                                 f"not on {', '.join(wanted)}: give the checkpoints in the "
                                 "order of --systems")
            seed = meta.get("seed")
            if seed is not None and int(seed) != self.seed:
                raise ValueError(f"{flag} {path} was trained on the split of seed {seed}, so "
                                 f"its training frames are among this experiment's test "
                                 f"frames under --seed {self.seed}: pass --seed {seed}")

    def command(self) -> str:
        """The command line that reruns this experiment, every default spelled out."""
        parts = ["gffmerge", "experiment", "--foundation", self.foundation, "--systems",
                 *self.systems, "--methods", ",".join(self.method_names), "--train-frames",
                 str(self.train_frames), "--finetune-epochs", str(self.epochs), "--seed",
                 str(self.seed), "--max-frames", str(self.max_frames)]
        if self.model_kind:
            parts += ["--model-kind", self.model_kind]
        if self.stats_batch_size is not None:
            parts += ["--stats-batch-size", str(self.stats_batch_size)]
        for flag in ("repair", "switch"):
            if getattr(self, flag):
                parts.append(f"--{flag}")
        if self.repair:
            parts += ["--repair-probe-epochs", str(self.repair_probe_epochs),
                      "--repair-lr", str(self.repair_lr)]
        if self.sources:
            parts += ["--sources", *self.sources]
        if self.joint:
            parts += ["--joint", self.joint]
        return shlex.join([*parts, "--out", self.out])

    def recipe(self, system: str | None) -> dict[str, Any]:
        """What a saved fine-tune (``system``) or joint model (None) must match to be
        reused: the foundation's bytes, the data and the training settings."""
        return {"foundation_sha256": file_sha256(Path(self.foundation)),
                "systems": [system] if system else list(self.systems),
                "train_frames": self.train_frames, "epochs": self.epochs,
                "seed": self.seed, "val_frames": self.val_frames,
                "batch_size": self.batch_size, "max_frames": self.max_frames,
                "lr": FINETUNE_LR}


def resolve_foundation(foundation: str | None, model_kind: str | None,
                       systems: list[str]) -> str:
    """The foundation checkpoint of an experiment.

    Given ``foundation``, that file; with ``model_kind`` too, its architecture must be that
    kind (the sources and the joint model are always fine-tuned from the foundation, so they
    have its architecture). Without ``foundation``, the shipped foundation of ``model_kind``
    (default ``gns``) for the dataset the systems come from:
    ``checkpoints/<dataset>/<kind>_foundation.pt`` (:func:`gffmerge.recipes.checkpoints_dir`),
    which needs shipped system names of one dataset (``lips20/Li3P``). A foundation adapter's
    name (``chgnet``, ``sevenn-0``, :mod:`gffmerge.adapters`) is kept as it is."""
    from .checkpoint import load_checkpoint
    from .models import MODELS
    from .recipes import checkpoint_path, checkpoints_dir

    if model_kind is not None and model_kind not in MODELS:
        raise ValueError(f"unknown --model-kind {model_kind!r}; choose from "
                         f"{', '.join(sorted(MODELS))}")
    from . import adapters

    if foundation is not None and foundation in adapters.names():  # CHGNet, SevenNet-0
        if model_kind is not None:
            raise ValueError(f"--foundation {foundation} names a foundation adapter; drop "
                             "--model-kind (it picks or checks gffmerge's own architectures)")
        return str(foundation)
    if foundation is not None:
        if not Path(foundation).is_file():
            raise FileNotFoundError(f"foundation checkpoint not found: {foundation} (or name "
                                    f"an adapter: {', '.join(adapters.names())})")
        if model_kind is not None:
            kind = load_checkpoint(foundation)[0].name
            if kind != model_kind:
                raise ValueError(f"--foundation {foundation} is a {kind} model but "
                                 f"--model-kind is {model_kind}: drop --model-kind or give "
                                 f"a {model_kind} foundation")
        return str(foundation)
    kind = model_kind or "gns"
    datasets = {s.split("/")[0] for s in systems if "/" in s and not Path(s).is_file()}
    if len(datasets) != 1 or any(Path(s).is_file() or "/" not in s for s in systems):
        raise ValueError("without --foundation the shipped foundation is used, which needs "
                         "shipped systems of one dataset (lips20/Li3P lips20/P2S5); pass "
                         "--foundation CKPT")
    dataset = datasets.pop()
    path = checkpoint_path(checkpoints_dir(), dataset, kind, "foundation")
    if not path.is_file():
        raise FileNotFoundError(f"no shipped {kind} foundation for {dataset} ({path}); train "
                                f"one (gffmerge train --role foundation --model {kind} ...) "
                                "and pass --foundation CKPT")
    return str(path)


def system_label(system: str) -> str:
    """The name a system has in the data: a shipped name as given, a file by its stem."""
    p = Path(system)
    if p.suffix and (p.is_absolute() or p.is_file()):
        return p.stem
    return system


def _first_repeat(items: list[str]) -> str:
    seen = set()
    for x in items:
        if x in seen:
            return x
        seen.add(x)
    return ""
