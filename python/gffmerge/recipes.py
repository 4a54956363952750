"""The recipes behind the shipped checkpoints (``make checkpoints``).

For each dataset a foundation model is pretrained on several systems, fine-tuned on each
of two task systems (the merge sources), and fine-tuned on their union (the joint "gold
standard"). ``python -m gffmerge.recipes`` regenerates ``checkpoints/<dataset>/<model>_
<role>.pt`` and ``checkpoints/README.md`` (command, seed, wall time and metrics of each).

A recipe with a :class:`PlateauRule` (rMD17) trains the roles it names to a plateau: their
``epochs`` are a ceiling, the learning rate is cut when the validation force MAE stalls, and
the run stops once it has not improved for 20 % of that ceiling (:mod:`gffmerge.plateau`);
later phases (:class:`ContinuePhase`, ``PlateauRule.then``) then continue each of those
checkpoints (:mod:`gffmerge.continuation`; ``--continue`` runs, on the existing checkpoints,
only the phases they have not had yet).
Other roles (the rMD17 foundations) and recipes without a rule (LiPS20) keep the fixed cosine
schedule their shipped checkpoints were made with.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import write_text_atomically
from .checkpoint import load_checkpoint
from .plateau import plateau_reached
from .train import TrainConfig, train


@dataclass(frozen=True)
class ContinuePhase:
    """A later phase of a plateau recipe (:mod:`gffmerge.continuation`): each role's
    checkpoint trained on for up to ``epochs`` more epochs from the learning rate the phase
    before ended with, plateau rule with ``patience``, wall budget ``max_minutes[role]``.
    ``patience`` >= 20 % of (all earlier ceilings + ``epochs``) makes every run that patience
    stops meet the plateau criterion over all phases. ``only_below_plateau``: skip (and end
    the plateau phases for) a checkpoint that already meets the criterion. ``schedule="cosine"``
    (a rule's ``anneal``): the learning rate decays to 1 % over the ``epochs``, and
    ``min_delta`` (None: the first phase's) decides which epoch counts as the best."""

    epochs: int
    patience: int
    max_minutes: dict[str, float]
    only_below_plateau: bool = False
    schedule: str = "plateau"
    min_delta: float | None = None

    def run(self, path: Path, role: str, command: str, progress: bool,
            number: int | None = None):
        """Continue the checkpoint at ``path``; ``number`` is recorded as the phase's."""
        from .continuation import continue_training
        extra = {} if number is None else {"phase": number}
        minutes = self.max_minutes[role]
        return continue_training(path, epochs=self.epochs, patience=self.patience,
                                 max_minutes=None if math.isinf(minutes) else minutes,
                                 progress=progress,
                                 metadata={"command": command, **extra},
                                 schedule=self.schedule, min_delta=self.min_delta)


@dataclass(frozen=True)
class PlateauRule:
    """Train to a plateau: up to the recipe's epochs, plateau schedule, early stopping on the
    validation force MAE, and a wall-clock budget (minutes) per role; the roles in
    ``max_minutes`` are the ones the rule applies to."""

    max_minutes: dict[str, float]
    patience_fraction: float = 0.2  # patience = this share of the epoch ceiling
    min_delta: float = 0.005  # an epoch improves when it beats the best by > 0.5 %
    monitor: str = "val_force_mae"
    then: tuple[ContinuePhase, ...] = ()  # phases 2, 3, ...: continue each checkpoint
    # the last phase of every checkpoint, once the plateau phases are over (by the criterion
    # or by running out): a cosine decay of the learning rate, so that a run its budgets
    # stopped at the peak learning rate still ends converged
    anneal: ContinuePhase | None = None

    def options(self, role: str, epochs: int) -> dict:
        """TrainConfig fields for one role with an epoch ceiling of ``epochs``."""
        return {"schedule": "plateau", "monitor": self.monitor, "min_delta": self.min_delta,
                "patience": max(1, math.ceil(self.patience_fraction * epochs)),
                "max_minutes": self.max_minutes[role]}


@dataclass(frozen=True)
class DatasetRecipe:
    name: str
    foundation: tuple[str, ...]
    tasks: tuple[str, ...]
    foundation_frames: int  # training frames for the foundation (random subset)
    epochs: dict[str, int] = field(default_factory=dict)
    lr: dict[str, float] = field(default_factory=dict)
    batch_size: int = 8
    plateau: PlateauRule | None = None  # None: the fixed cosine schedule of ``epochs``
    folder: str | None = None  # checkpoint folder (default: ``name``)
    joint_role: str = "joint"  # file name of the joint checkpoint: <model>_<joint_role>.pt
    train_foundation: bool = True  # False: the foundation is another recipe's, used as is
    train_frames: int | None = None  # training frames per task system (None: the budget's)

    @property
    def dir(self) -> str:
        return self.folder or self.name


# The LiPS20 fine-tunes and joint models (both pairs): patience 12 = 20 % of the 60-epoch
# ceiling; later phases only for a checkpoint short of the plateau criterion: 60 more
# epochs, patience 24 = 20 % of the 120 epochs of both phases, then 240 more, patience 96 =
# 20 % of 480 (GNS P2S5 still fell 8 % over phase 2's last 40 epochs at the peak learning
# rate), then 480 more, patience 192 = 20 % of 960 (GNS P2S5 still fell ~1 % per 20 epochs
# at the end of phase 3). Last (stop 23): the PaiNN pair and GNS beta were still improving
# at the peak learning rate (no cut) when the wall budgets of all four phases were spent, so
# every checkpoint ends with 20 epochs of cosine decay from its last learning rate to 1 %
# of it, the best epoch by any improvement (min_delta 0); GNS beta took 0.6 and PaiNN Li3P
# 0.9 min per epoch on the shared 2-core machine.
LIPS20_PLATEAU = PlateauRule(
    max_minutes={"finetune": 30.0, "joint": 60.0},
    then=(ContinuePhase(60, 24, {"finetune": 20.0, "joint": 40.0}, only_below_plateau=True),
          ContinuePhase(240, 96, {"finetune": 25.0, "joint": 60.0}, only_below_plateau=True),
          ContinuePhase(480, 192, {"finetune": 40.0, "joint": 60.0}, only_below_plateau=True)),
    anneal=ContinuePhase(20, 20, {"finetune": 40.0, "joint": 60.0}, schedule="cosine",
                         min_delta=0.0))

LIPS20 = DatasetRecipe(
    "lips20",
    foundation=tuple(f"lips20/{s}" for s in ("Li3P", "Li4P2S6", "Li7PS6", "Li2PS3-hex",
                                             "Li2PS3-orth", "Li48P16S61", "P2S5", "P4S3",
                                             "Li", "P", "S")),
    tasks=("lips20/beta-Li3PS4", "lips20/gamma-Li3PS4"),
    foundation_frames=4000,
    # the paper's pair: fine-tunes and joint model to a plateau (stop 22 of issue 10; until
    # then 30-epoch cosine runs whose best epoch was their last); the foundation keeps its
    # 15-epoch cosine recipe (not retrained: every fine-tune starts from it)
    epochs={"foundation": 15, "finetune": 60, "joint": 60},
    lr={"foundation": 2e-3, "finetune": 5e-4, "joint": 5e-4},
    plateau=LIPS20_PLATEAU,
)
RMD17 = DatasetRecipe(
    "rmd17",
    foundation=tuple(f"rmd17/{s}" for s in ("azobenzene", "benzene", "naphthalene",
                                            "paracetamol", "salicylic_acid")),
    tasks=("rmd17/ethanol", "rmd17/malonaldehyde"),
    foundation_frames=4000,
    # fine-tune and joint epochs are ceilings of the plateau rule; the foundation keeps its
    # 30-epoch cosine recipe (not retrained: checkpoints/README.md, "Trained to a plateau")
    epochs={"foundation": 30, "finetune": 60, "joint": 60},
    lr={"foundation": 2e-3, "finetune": 5e-4, "joint": 5e-4},
    # phase 2 (stop 2 of issue 10): 140 more epochs from the last learning rate, patience 40
    # = 20 % of the 200 epochs of both phases; wall budgets sum to about 70 min for all six.
    # phases 3 and 4 (stop 3): only the checkpoints still short of the plateau criterion,
    # up to 200 more epochs each, patience 80 and 120 = 20 % of the 400 and 600 epochs of
    # all phases so far.
    plateau=PlateauRule(max_minutes={"finetune": 20.0, "joint": 30.0},
                        then=(ContinuePhase(140, 40, {"finetune": 9.0, "joint": 16.0}),
                              ContinuePhase(200, 80, {"finetune": 6.0, "joint": 12.0},
                                            only_below_plateau=True),
                              ContinuePhase(200, 120, {"finetune": 6.0, "joint": 12.0},
                                            only_below_plateau=True))),
)
# The LiPS20 pair of different composition (the demo's and the merge-quality benchmark's):
# sources and joint fine-tuned from the LiPS20 foundation above (not retrained here) on 400
# training frames per system, trained to a plateau (stop 20 of issue 10; until then these three
# checkpoints were 7-minute runs stopped by their wall budget, see checkpoints/README.md).
LIPS20_PAIR = DatasetRecipe(
    "lips20-Li3P-P2S5", folder="lips20", joint_role="joint-Li3P-P2S5",
    train_foundation=False, train_frames=400,
    foundation=LIPS20.foundation, tasks=("lips20/Li3P", "lips20/P2S5"),
    foundation_frames=LIPS20.foundation_frames,
    epochs={"finetune": 60, "joint": 60}, lr={"finetune": 5e-4, "joint": 5e-4},
    plateau=LIPS20_PLATEAU,
)
DATASETS = {d.name: d for d in (LIPS20, LIPS20_PAIR, RMD17)}
MODEL_CONFIGS = {
    "gns": {"latent_dim": 64, "hidden_dim": 64, "n_layers": 3, "cutoff": 5.0},
    "painn": {"n_features": 32, "n_interactions": 3, "cutoff": 5.0},
}
# PaiNN trains ~4-5x slower per frame on CPU (double backward through the vector
# features): fewer frames, and, under the cosine schedule, fewer epochs keep
# `make checkpoints` near an hour on 2 cores (a plateau recipe's epochs are a ceiling that
# the plateau rule stops short of, so there the epoch factor is not applied).
BUDGET = {"gns": (1.0, None), "painn": (0.34, 400)}  # (epoch factor, max training frames)


def _annealed(meta: dict) -> bool:
    return any((p.get("config") or {}).get("schedule") == "cosine"
               for p in (meta.get("phases") or ())[1:])


def before_anneal(meta: dict) -> tuple[int, int] | None:
    """(epochs, best epoch) of an annealed checkpoint before its anneal, the best epoch as
    the plateau rule kept it (with its ``min_delta``), from the phase records; None for a
    checkpoint whose last phase is not an anneal (a cosine phase: resumed pieces of one
    count as one). The plateau criterion means something there, not after an anneal (which
    ends at its best epoch almost by construction). A plateau phase run after an anneal
    makes the whole history count again (``None``)."""
    phases = list(meta.get("phases") or [])
    if not _annealed(meta):
        return None
    tail = len(phases)
    while tail > 1 and (phases[tail - 1].get("config") or {}).get("schedule") == "cosine":
        tail -= 1
    if tail == len(phases):
        return None
    best, n = phases[0].get("best_epoch", -1), phases[0].get("epochs_run") or 0
    for phase in phases[1:tail]:
        if phase.get("best_epoch") is not None and phase["best_epoch"] >= 0:
            best = phase["start_epoch"] + phase["best_epoch"]
        n = phase["start_epoch"] + (phase.get("epochs_run") or 0)
    return n, best


def plateau_state(meta: dict) -> tuple[int, int, bool]:
    """(epochs, best epoch, criterion met) of a checkpoint as the recipes judge it: on the
    epochs before a final anneal (:func:`before_anneal`), else on its whole history."""
    history = meta.get("history") or []
    pre = before_anneal(meta)
    if pre is not None:
        n, best = pre
        return n, best, plateau_reached(history[:n], best)
    best = (meta.get("metrics") or {}).get("best_epoch")
    best = -1 if best is None else best
    return len(history), best, plateau_reached(history, best)


def _ends_annealed(meta: dict) -> bool:
    """Whether the last phase of a checkpoint is an anneal (a cosine phase)."""
    phases = meta.get("phases") or ()
    return len(phases) > 1 and (phases[-1].get("config") or {}).get("schedule") == "cosine"


def _stopped_by(meta: dict) -> str:
    """What ended a checkpoint's training, for the README table."""
    phases = meta.get("phases") or ()
    if _ends_annealed(meta):
        return (f"{phases[-2].get('stopped_by')}, then a {phases[-1].get('epochs_run')}-epoch "
                "anneal")
    if phases and phases[-1].get("plateau_check"):
        check = phases[-1]
        gain = "no gain" if check.get("best_epoch", -1) < 0 else "a gain"
        how = ("interrupted before its end" if check.get("stopped_by") == "interrupted"
               else f"stopped by {check.get('stopped_by')}")
        return f"a {check.get('epochs_run')}-epoch plateau check ({gain}, {how})"
    return str((meta.get("metrics") or {}).get("stopped_by", "not recorded"))


def plateau_check_phase(meta: dict) -> tuple[float, int] | None:
    """(learning rate, patience) of the phase that checks whether a checkpoint short of the
    plateau criterion is on a plateau, or None if it meets the criterion already.

    The check trains on from the learning rate its last plateau phase ended with (before
    any anneal: an anneal's last rate is 1 % of that), under the plateau rule with a
    patience of a quarter of the epochs run so far: the least that makes a check without a
    gain meet the criterion over the whole history (n − 1 − best ≥ ⌈0.2 n⌉ with n the
    epochs after the check), whatever the best epoch before it. Such a check keeps the
    weights as they were (the starting model is the candidate to beat). A check that does
    improve trains on until its patience or its ceiling (3 × the patience) stops it, and may
    then still be short of the criterion (a gain late in the check needs a longer patience
    than the one fixed at its start): checking again answers with the longer history's
    patience."""
    history = meta.get("history") or []
    judged, _, reached = plateau_state(meta)  # judged: the epochs before a final anneal
    if not history or reached:
        return None
    return float(history[judged - 1]["lr"]), max(1, math.ceil(len(history) / 4))


def _numbers(records: list[dict]) -> list[int]:
    """The phase number of each phase record (recorded since stop 24; before, by position:
    phases were never run twice then)."""
    return [r.get("phase", i + 1) for i, r in enumerate(records)]


def _resume(rule: PlateauRule, role: str, meta: dict) -> tuple[int, ContinuePhase] | None:
    """The rest of an interrupted phase (what its epoch ceiling and wall budget left), or
    None when the last phase was not interrupted or has nothing left."""
    records = list(meta.get("phases") or ())
    if records:
        last, number = records[-1], _numbers(records)[-1]
        if last.get("stopped_by") != "interrupted" or last.get("plateau_check"):
            return None  # an interrupted plateau check is run again with --plateau-check
        same = [r for r, n in zip(records, _numbers(records)) if n == number]
    else:  # phase 1 (train) interrupted, nothing continued yet
        if not meta.get("interrupted"):
            return None
        last, number = {}, 1
        same = [{"epochs_run": len(meta.get("history") or ()),
                 "wall_seconds": meta.get("wall_seconds", 0.0)}]
    if number == 1:  # phase 1's own config is its budget
        cfg = meta.get("config") or {}
        if "epochs" not in cfg:
            return None
        phase = ContinuePhase(cfg["epochs"], cfg.get("patience") or cfg["epochs"],
                              {role: cfg.get("max_minutes") or math.inf})
    elif (last.get("config") or {}).get("schedule") == "cosine":
        phase = rule.anneal
    elif number - 2 < len(rule.then):
        phase = rule.then[number - 2]
    else:
        return None
    if phase is None or role not in phase.max_minutes:
        return None
    epochs = phase.epochs - sum(r.get("epochs_run") or 0 for r in same)
    minutes = phase.max_minutes[role] - sum(r.get("wall_seconds") or 0.0 for r in same) / 60
    if epochs < 1 or minutes <= 0:
        return None
    return number, dataclasses.replace(phase, epochs=epochs,
                                       max_minutes={**phase.max_minutes, role: minutes})


def next_phase(rule: PlateauRule | None, role: str,
               meta: dict) -> tuple[int, ContinuePhase] | None:
    """The next phase (number, phase) to run on a checkpoint of ``role`` with metadata
    ``meta``, or None. An interrupted phase (Ctrl-C, a killed job) is resumed first with
    what its epoch ceiling and wall budget left (phase 1 included). Otherwise phases already
    recorded in ``meta["phases"]`` are done (a checkpoint without that record has run phase
    1 only), phases whose budget does not name the role are passed over, and an
    ``only_below_plateau`` phase on a checkpoint that meets the plateau criterion ends the
    plateau phases. Then the rule's ``anneal`` runs once; an annealed checkpoint is
    finished."""
    if rule is None:
        return None
    resumed = _resume(rule, role, meta)
    if resumed is not None:
        return resumed
    if _annealed(meta):
        return None
    done = max(_numbers(list(meta.get("phases") or ())) or [1])
    for number, phase in enumerate(rule.then, start=2):
        if number <= done or role not in phase.max_minutes:
            continue
        if phase.only_below_plateau and plateau_reached(
                meta.get("history") or [], (meta.get("metrics") or {}).get("best_epoch", -1)):
            break
        return number, phase
    if rule.anneal is not None and role in rule.anneal.max_minutes:
        return done + 1, rule.anneal
    return None


def checkpoint_path(root: Path, dataset: str, model: str, role: str) -> Path:
    """``root/<dataset>/<model>_<role>.pt``; ``role`` is foundation, joint or a system."""
    return root / dataset / f"{model}_{role.split('/')[-1]}.pt"


def checkpoints_dir() -> Path:
    """Where the shipped checkpoints are: ``$GFFMERGE_CHECKPOINTS``, else the repository's
    ``checkpoints/``, else ``./checkpoints``."""
    env = os.environ.get("GFFMERGE_CHECKPOINTS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "checkpoints"
    return repo if repo.is_dir() else Path("checkpoints")


def configs(recipe: DatasetRecipe, model: str, root: Path) -> list[tuple[str, TrainConfig]]:
    """(role, config) of every checkpoint of one dataset and architecture, in order."""
    base = checkpoint_path(root, recipe.dir, model, "foundation")
    factor, frames = BUDGET[model]
    if recipe.train_frames is not None:
        frames = recipe.train_frames if frames is None else min(frames, recipe.train_frames)
    foundation_frames = (recipe.foundation_frames if frames is None
                         else min(recipe.foundation_frames, 4 * frames))

    def run(role: str) -> dict:
        if recipe.plateau is not None and role in recipe.plateau.max_minutes:
            epochs = recipe.epochs[role]
            return {"epochs": epochs, **recipe.plateau.options(role, epochs)}
        return {"epochs": max(3, round(recipe.epochs[role] * factor))}

    out = [("foundation", TrainConfig(
        systems=list(recipe.foundation), role="foundation", model=model,
        model_config=MODEL_CONFIGS[model], lr=recipe.lr["foundation"],
        train_frames=foundation_frames, val_frames=200, batch_size=recipe.batch_size,
        **run("foundation")))] if recipe.train_foundation else []
    for system in recipe.tasks:
        out.append((system, TrainConfig(
            systems=[system], role="finetune", init=str(base), lr=recipe.lr["finetune"],
            train_frames=frames, batch_size=recipe.batch_size, **run("finetune"))))
    out.append((recipe.joint_role, TrainConfig(
        systems=list(recipe.tasks), role="joint", init=str(base), lr=recipe.lr["joint"],
        train_frames=len(recipe.tasks) * frames if frames else None, batch_size=recipe.batch_size,
        **run("joint"))))
    return out


def _recorded_init(cfg: TrainConfig, root: Path) -> dict:
    """The foundation a checkpoint starts from, as its metadata records it (``init``):
    relative to ``root`` (``lips20/gns_foundation.pt``) when it lies below it, so that
    :mod:`gffmerge.lineage` finds it below any folder the whole tree is copied to (a
    checkpoint trained under a scratch ``--root`` and shipped in ``checkpoints/``); the
    path as given otherwise."""
    if not cfg.init:
        return {}
    try:
        return {"init": Path(cfg.init).resolve().relative_to(root.resolve()).as_posix()}
    except ValueError:
        return {}


def write_readme(root: Path) -> Path:
    """Regenerate ``root/README.md`` from the metadata stored in every checkpoint.

    The generated part is the title, the table and the seed line; the hand-written sections
    of an existing README (everything from its first ``## `` heading on) are kept after it.
    """
    lines = ["# Shipped checkpoints", "",
             "Generated by `make checkpoints` (`python -m gffmerge.recipes --all`); every "
             "number below is read back from the checkpoint's own metadata. Test metrics are "
             "on the checkpoint's own systems' test split (hash split 80/10/10, seed 42); "
             "energy MAE per atom, force MAE over components. Epochs: run (best, 0-based); "
             "stopped by: `patience` (the plateau rule), `epochs` (the last epoch of the "
             "schedule) or `wall budget` (of the last plateau phase; an anneal, the cosine "
             "phase that ends the LiPS20 recipes, is named after it); CPU time is the "
             "training process's.", "",
             "| checkpoint | role | systems | train frames | epochs (best) | stopped by | "
             "wall time | CPU time | test E MAE (meV/atom) | test F MAE (meV/Å) | command |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(root.glob("*/*.pt")):
        _, meta = load_checkpoint(path)
        test = meta.get("metrics", {}).get("test", {}).get("all", {})
        cfg = meta.get("config", {})
        m = meta.get("metrics", {})
        systems = ", ".join(s.split("/")[-1] for s in cfg.get("systems", []))
        if len(systems) > 60:
            systems = f"{len(cfg.get('systems', []))} systems"
        cpu = (f"{meta['cpu_seconds'] / 60:.1f} min" if "cpu_seconds" in meta
               else "not recorded")
        lines.append(
            f"| `{path.relative_to(root)}` | {meta.get('role')} | {systems} | "
            f"{meta.get('train_frames')} | {m.get('epochs_run')} ({m.get('best_epoch')}) | "
            + _stopped_by(meta) + " | "
            f"{meta.get('wall_seconds', 0) / 60:.1f} min | {cpu} | "
            f"{test.get('energy_mae_mev_per_atom', float('nan')):.1f} | "
            f"{test.get('force_mae_mev_per_a', float('nan')):.1f} | "
            + (f"`{meta['command']}` |" if meta.get("command")
               else "not recorded (see the sections below) |"))
    lines += ["", "Seeds: sampling, split and training seed 42 (`TrainConfig.seed`). "
              "Configs: see `python/gffmerge/recipes.py`.", ""]
    path = root / "README.md"
    text = "\n".join(lines)
    if path.is_file():
        old = path.read_text().splitlines()
        tail = next((i for i, line in enumerate(old) if line.startswith("## ")), None)
        if tail is not None:
            text += "\n" + "\n".join(old[tail:]) + "\n"
    write_text_atomically(path, text)
    return path


def build(recipe: DatasetRecipe, model: str, root: Path, roles: list[str] | None = None,
          skip_existing: bool = False, continue_only: bool = False,
          progress: bool = True, plateau_check: bool = False,
          checks: int = 1) -> list[dict]:
    """Train the checkpoints of one recipe and architecture under ``root`` (``roles``: only
    these roles, by full or short name), each followed by the recipe's later phases it has
    not had yet; ``continue_only``: only those later phases, on existing checkpoints;
    ``plateau_check``: only the check of :func:`plateau_check_phase`, on existing
    checkpoints short of the plateau criterion, repeated up to ``checks`` times while a
    checkpoint is still short of it. Returns one summary per checkpoint (also printed as a
    JSON line)."""
    rule = recipe.plateau
    done = []
    for role, cfg in configs(recipe, model, root):
        short = role.split("/")[-1]
        if roles and role not in roles and short not in roles:
            continue
        out = checkpoint_path(root, recipe.dir, model, role)
        if skip_existing and out.is_file():
            continue
        cmd = f"python -m gffmerge.recipes --dataset {recipe.name} --model {model} --roles {short}"
        if plateau_check:
            if out.is_file():
                flags = " --plateau-check" + (f" --checks {checks}" if checks > 1 else "")
                done.append(_plateau_check(out, cmd + flags, progress, checks))
            continue
        later = rule is not None and any(cfg.role in ph.max_minutes for ph in
                                         rule.then + ((rule.anneal,) if rule.anneal else ()))
        if continue_only and not later:
            continue
        print(f"== {out} ({cmd})", flush=True)
        if not continue_only:
            train(cfg, output=out, progress=progress,
                  metadata={"command": cmd, **_recorded_init(cfg, root)})
        _, meta = load_checkpoint(out)
        while (step := next_phase(rule, cfg.role, meta)) is not None:
            number, phase = step
            print(f"-- phase {number}", flush=True)
            phase.run(out, cfg.role, cmd + " --continue", progress=progress, number=number)
            _, meta = load_checkpoint(out)
        m = meta["metrics"]
        summary = {"checkpoint": str(out), "phases": len(meta.get("phases") or ()) or 1,
                   "minutes": meta.get("wall_seconds", 0.0) / 60,
                   "stopped_by": m.get("stopped_by"),
                   "plateau": plateau_state(meta)[2],
                   "test": m.get("test", {}).get("all", {})}
        print(json.dumps(summary), flush=True)
        done.append(summary)
    return done


def _plateau_check(out: Path, cmd: str, progress: bool, checks: int = 1) -> dict:
    """Up to ``checks`` plateau checks of one checkpoint, one after another, until it meets
    the criterion (a check without a gain always ends there)."""
    from . import continuation
    _, meta = load_checkpoint(out)
    ran = 0
    while ran < checks and (check := plateau_check_phase(meta)) is not None:
        lr, patience = check
        ran += 1
        which = f" check {ran} of at most {checks}" if checks > 1 else ""
        print(f"== {out} ({cmd}):{which} from lr {lr:.3g}, patience {patience}", flush=True)
        continuation.continue_training(
            out, epochs=3 * patience, patience=patience, lr=lr, progress=progress,
            metadata={"command": cmd, "phase": len(meta.get("phases") or [1]) + 1,
                      "plateau_check": True})
        _, meta = load_checkpoint(out)
    if ran == 0:
        print(f"== {out}: meets the plateau criterion already", flush=True)
    n, best, reached = plateau_state(meta)
    summary = {"checkpoint": str(out), "checks": ran, "epochs": n, "best_epoch": best,
               "plateau": reached, "test": meta["metrics"].get("test", {}).get("all", {})}
    print(json.dumps(summary), flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gffmerge.recipes",
                                description="Regenerate the shipped checkpoints.")
    p.add_argument("--dataset", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS))
    p.add_argument("--model", nargs="+", choices=sorted(MODEL_CONFIGS),
                   default=sorted(MODEL_CONFIGS))
    p.add_argument("--roles", nargs="+", help="only these roles (foundation, joint, a system)")
    p.add_argument("--root", default="checkpoints")
    p.add_argument("--skip-existing", action="store_true")
    p.add_argument("--all", action="store_true", help="every dataset and model (default)")
    p.add_argument("--readme-only", action="store_true")
    p.add_argument("--continue", dest="continue_", action="store_true",
                   help="only the second phase: continue the existing checkpoints of the "
                        "roles whose recipe has one")
    p.add_argument("--plateau-check", action="store_true",
                   help="only a plateau check of the existing checkpoints short of the "
                        "plateau criterion: one more plateau phase from the learning rate "
                        "their last one ended with, patience a quarter of their epochs")
    p.add_argument("--checks", type=int, default=1, metavar="N",
                   help="with --plateau-check: check again, up to N checks in all, while "
                        "a checkpoint is still short of the criterion (a check that "
                        "improved late may leave it short; default 1)")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.plateau_check and args.continue_:
        print("error: --plateau-check and --continue are two different runs; give one",
              file=sys.stderr)
        return 2
    if args.checks != 1 and not args.plateau_check:
        print("error: --checks counts plateau checks; give it with --plateau-check",
              file=sys.stderr)
        return 2
    if args.checks < 1:
        print(f"error: --checks {args.checks}: give at least 1", file=sys.stderr)
        return 2
    root = Path(args.root)
    if args.roles:
        known = {name for d in args.dataset for m in args.model
                 for role, _ in configs(DATASETS[d], m, root)
                 for name in (role, role.split("/")[-1])}
        unknown = [r for r in args.roles if r not in known]
        if unknown:
            print(f"error: --roles {' '.join(unknown)} matches no checkpoint of "
                  f"--dataset {' '.join(args.dataset)}; the roles there are: "
                  f"{', '.join(sorted(known))}", file=sys.stderr)
            return 2
    code = 0
    if not args.readme_only:
        try:
            for dataset in args.dataset:
                for model in args.model:
                    build(DATASETS[dataset], model, root, roles=args.roles,
                          skip_existing=args.skip_existing, continue_only=args.continue_,
                          progress=not args.quiet, plateau_check=args.plateau_check,
                          checks=args.checks)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the trainer saved what it had
            print(f"interrupted: {exc or 'stopped'}; the README lists the checkpoints as "
                  "they are now", file=sys.stderr)
            code = 130  # the CLI's exit code for an interrupted command
    print(f"wrote {write_readme(root)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
