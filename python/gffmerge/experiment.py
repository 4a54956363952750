"""``gffmerge experiment``: fine-tune, train jointly, merge with every method, compare.

From one foundation checkpoint and K systems (shipped names or data files), :func:`run`

1. fine-tunes one source per system from the foundation (:func:`gffmerge.train.train`,
   role ``finetune``, ``train_frames`` training frames of that system, ``epochs`` epochs);
2. trains the joint model on the union with the same recipe (role ``joint``, the same
   frames of every system, drawn evenly, the same epochs): its wall time is the
   denominator of every speed-up;
3. merges the sources with each method: methods that need a base get the foundation,
   ``progressive`` (and any method that runs the models itself) gets each system's
   validation split as ``val_data``, methods with a paper grid (TIES, task arithmetic,
   Fisher; :data:`gffmerge.methods.grid.PAPER_GRIDS`) pick their options on the combined
   validation split, never on test;
4. with ``repair``, fine-tunes the default method's merge briefly (:func:`gffmerge.repair.repair`);
5. evaluates every model on the combined test split and writes ``DIR/results.json``
   (rewritten atomically after every finished row), ``DIR/report.md`` and ``DIR/methods.png``.

With ``sources`` (``--sources``: one fine-tune per system) and/or ``joint`` (``--joint``),
those checkpoints are used as they are instead of steps 1 and 2 (e.g. fine-tunes trained to
a plateau elsewhere); they must be fine-tuned from the foundation, on their system, with
this experiment's split seed (checked before any work), and their rows report the training
wall time their metadata records.

Checkpoints of the fine-tunes and the joint model are saved in ``DIR/checkpoints/``; a rerun
with the same ``--out`` and the same settings reuses them (Ctrl-C keeps what finished; a
training interrupted half-way is redone).

The default budget (``train_frames=400`` per system, ``epochs=10``) is sized so that two
1000-frame LiPS20 systems with the shipped GNS finish in under 30 minutes on 2 cores; the
arithmetic is in :data:`BUDGET_NOTE`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from . import methods
from .atomic import write_atomically
from .experiment_config import (  # noqa: F401  (re-exported)
    FINETUNE_LR,
    RESULT_METRICS,
    ExperimentConfig,
    resolve_foundation,
    system_label,
)
from .experiment_report import BUDGET_NOTE, report_markdown, write_chart  # noqa: F401
from .provenance import git_commit, machine


# ---------------------------------------------------------------- results
def result_row(metrics: dict[str, dict[str, float]], systems: list[str],
               seconds: float | None) -> dict[str, Any]:
    """One row of ``results.json`` from :func:`gffmerge.evaluate.evaluate`'s output."""
    return {"combined": {k: float(metrics["all"][k]) for k in RESULT_METRICS},
            "systems": {s: {k: float(metrics[s][k]) for k in RESULT_METRICS}
                        for s in systems},
            "seconds": None if seconds is None else float(seconds)}


def write_results(path: Path, payload: dict[str, Any]) -> None:
    text = json.dumps(payload, indent=2, allow_nan=False, default=str) + "\n"
    write_atomically(path, lambda tmp: Path(tmp).write_text(text))


# ---------------------------------------------------------------- the run
class _Experiment:
    def __init__(self, cfg: ExperimentConfig, progress: bool):
        from .data import load_dataset

        self.cfg = cfg
        self.progress = progress
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints"
        self.data = load_dataset(cfg.systems, max_frames=cfg.max_frames, seed=cfg.seed)
        self.names = list(self.data.system_names)
        self.test = self.data.split("test")
        self.repair_starts: tuple[dict, float] = ({}, 0.0)  # the default's alternatives
        self.last_report = None  # the report of the last merge
        missing = [s for s in self.names if s not in set(
            self.test.system_names[i] for i in set(self.test.system_ids.tolist()))]
        if missing:
            raise ValueError(f"no test frames of {', '.join(missing)}; give each system more "
                             "frames (the split is 80/10/10)")
        self.payload: dict[str, Any] = {"default_method": methods.DEFAULT_METHOD,
                                        "methods": {}, "command": cfg.command(),
                                        "git_commit": git_commit(), "machine": machine()}
        self.notes: dict[str, str] = {}

    # -- bookkeeping
    def finish_row(self, name: str, model, seconds: float | None, note: str = "") -> None:
        from .evaluate import evaluate

        metrics = evaluate(model, self.test, batch_size=self.cfg.batch_size,
                           progress=self.progress)
        self.payload["methods"][name] = result_row(metrics, self.names, seconds)
        if note:
            self.notes[name] = note
        write_results(self.out / "results.json", self.payload)

    def fail(self, method: str, exc: Exception) -> None:
        """Record that ``method`` failed (``results.json``'s ``failures``, the report's
        notes); the other methods still run."""
        text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        self.payload.setdefault("failures", {})[method] = text
        self.notes[method] = f"failed: {text}"
        write_results(self.out / "results.json", self.payload)

    # -- training
    def trained(self, role: str, systems: list[str], path: Path) -> tuple[Any, float, bool]:
        """(model, wall seconds, reused) of a fine-tune or the joint model: the checkpoint
        in ``path`` when it was made by the same recipe and finished, else a new run."""
        from .checkpoint import load_checkpoint
        from .train import TrainConfig, train

        recipe = self.cfg.recipe(systems[0] if role == "finetune" else None)
        if path.is_file():
            model, meta = load_checkpoint(path)
            if meta.get("experiment") == recipe and not meta.get("interrupted"):
                return model, float(meta["wall_seconds"]), True
        k = len(systems)
        tc = TrainConfig(systems=list(systems), role=role, init=str(self.cfg.foundation),
                         epochs=self.cfg.epochs, lr=FINETUNE_LR,
                         batch_size=self.cfg.batch_size,
                         train_frames=self.cfg.train_frames * k,
                         val_frames=self.cfg.val_frames * k,
                         test_frames=self.cfg.val_frames * k, seed=self.cfg.seed,
                         max_frames=self.cfg.max_frames, balanced=True,
                         patience=self.cfg.epochs)
        result = train(tc, output=path, progress=self.progress,
                       metadata={"experiment": recipe})
        return result.model, result.seconds, False

    # -- merging
    def loaders(self, split: str, models, batch_size: int | None = None) -> list:
        part = self.data.split(split)
        return [part.for_system(s).batches_for(m, batch_size or self.cfg.batch_size)
                for s, m in zip(self.names, models)]

    def stats_loaders(self, models) -> list:
        """Each system's training frames that batches of ``batch_size`` would measure up to
        ``merge_frames``, batched by an atom budget instead
        (:func:`gffmerge.collect.budget.stats_batches`): the same frames in fewer, larger
        batches, so the statistics are the same sums (summed in another order)."""
        from .collect.budget import stats_batches

        part = self.data.split("train")
        return [stats_batches(part.for_system(s), m, self.cfg.batch_size, self.cfg.merge_frames)
                for s, m in zip(self.names, models)]

    def merge(self, method: str, sources, foundation_path: str):
        """(merged model, wall seconds, note) of one method."""
        import warnings

        from .checkpoint import load_checkpoint
        from .methods.grid import PAPER_GRIDS
        from .pipeline import merge

        spec = methods.get(method)
        needs = spec.needs_for(spec.options())
        base = (load_checkpoint(foundation_path)[0]
                if needs.base_model or needs.base_optional else None)
        val = self.data.split("val")
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # listed in the merge reports, not needed here
            warnings.simplefilter("ignore")
            options: dict[str, Any] = {}
            data = val_data = limit = grid = None
            if method in PAPER_GRIDS:  # chosen on validation frames, never on test
                grid = "auto"
                val_data = [val.for_system(s).subset(self.cfg.grid_val_frames,
                                                     seed=self.cfg.seed) for s in self.names]
            if needs.data:
                known = {o.name for o in spec.option_infos()}
                options = {k: v for k, v in (("frames", self.cfg.merge_frames),
                                             ("val_frames", self.cfg.grid_val_frames))
                           if k in known}
                if (method == methods.DEFAULT_METHOD and self.cfg.repair
                        and self.cfg.repair_probe_epochs and "alternatives" in known):
                    options["alternatives"] = True  # the repair's other starts
                data = self.loaders("train", sources)
                val_data = [val.for_system(s) for s in self.names]
            elif needs.stats and not needs.gradients and self.cfg.stats_batch_size is None:
                data = self.stats_loaders(sources)  # sums only: batched by atom budget
            elif needs.stats or needs.gradients:  # Fisher sums per batch: batches as given
                data = self.loaders("train", sources, self.cfg.stats_batch_size)
                limit = self.cfg.merge_frames
            result = merge(sources, data, method=method, limit=limit, progress=self.progress,
                           labels=self.names, base=base, val_data=val_data, grid=grid,
                           **options)
        seconds = time.perf_counter() - t0
        self.last_report = result.report
        note = ""
        if grid:
            chosen = ", ".join(f"{k}={v}" for k, v in result.report.options["chosen"].items())
            note = f"grid on the combined validation split: {chosen}"
        if result.alternatives:  # made for the repair: its time is the repair's
            alt_s = float(result.report.times.get("alternatives", 0.0))
            self.repair_starts = (result.alternatives, alt_s)
            seconds -= alt_s
        return result.model, seconds, note

    def switched(self, model, sources):
        """``model`` with each source's atom-embedding table for its own system's frames."""
        from .models.embedding_switch import EmbeddingSwitch

        return EmbeddingSwitch.from_sources(model, sources, self.names)

    # -- the whole run
    def run(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        from .checkpoint import load_checkpoint
        from .repair import repair

        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        steps = (2 + len(self.names) + len(cfg.method_names) + int(cfg.repair)
                 + (len({methods.DEFAULT_METHOD, "gffmerge"} & set(cfg.method_names))
                    if cfg.switch else 0))
        bar = tqdm(total=steps, desc="experiment", unit="row", disable=not self.progress)

        def phase(text: str) -> None:
            bar.set_description(f"experiment: {text}")
            bar.refresh()

        try:
            phase("foundation")
            foundation = load_checkpoint(cfg.foundation)[0]
            self.finish_row("foundation", foundation, 0.0, "given, not trained here")
            bar.update()
            sources = []
            for k, system in enumerate(self.names):
                phase(f"fine-tune {system}")
                if cfg.sources:
                    model, seconds, note = _given_model(cfg.sources[k])
                else:
                    path = self.ckpt_dir / f"finetune_{_file_name(system)}.pt"
                    model, seconds, reused = self.trained("finetune", [self._given(system)],
                                                          path)
                    note = "reused checkpoint" if reused else ""
                sources.append(model)
                self.finish_row(f"finetune:{system}", model, seconds, note)
                bar.update()
            phase("joint")
            if cfg.joint:
                joint, joint_s, note = _given_model(cfg.joint)
            else:
                joint, joint_s, reused = self.trained("joint", list(cfg.systems),
                                                      self.ckpt_dir / "joint.pt")
                note = "reused checkpoint" if reused else ""
            self.finish_row("joint", joint, joint_s, note)
            bar.update()
            default_model = default_s = None
            for method in cfg.method_names:
                phase(f"merge {method}")
                try:
                    model, seconds, note = self.merge(method, sources, cfg.foundation)
                except Exception as exc:  # noqa: BLE001  (one method's failure is a result)
                    self.fail(method, exc)
                    bar.update()
                    continue
                self.finish_row(method, model, seconds, note)
                if cfg.switch and method in (methods.DEFAULT_METHOD, "gffmerge"):
                    self.finish_row(f"{method}+switch", self.switched(model, sources),
                                    seconds, "each system's own atom-embedding table")
                if method == methods.DEFAULT_METHOD:
                    default_model, default_s = model, seconds
                bar.update()
            if cfg.repair and default_model is not None:
                phase(f"repair {methods.DEFAULT_METHOD}")
                others, alt_s = self.repair_starts
                fixed = repair(default_model, self.data, frames=cfg.repair_frames,
                               epochs=cfg.repair_epochs, seed=cfg.seed,
                               batch_size=cfg.batch_size,
                               val_frames=cfg.val_frames * len(self.names),
                               starts=others or None,
                               probe_epochs=max(1, cfg.repair_probe_epochs),
                               lr=cfg.repair_lr, progress=self.progress)
                self.finish_row(f"{methods.DEFAULT_METHOD}+repair", fixed.model,
                                default_s + alt_s + fixed.seconds,
                                repair_note(fixed, cfg))
                bar.update()
        finally:
            bar.close()
            if self.payload["methods"]:
                self.write_report()
        return self.payload

    def _given(self, system: str) -> str:
        return self.cfg.systems[self.names.index(system)]

    def write_report(self) -> None:
        chart = write_chart(self.payload, self.out / "methods.png")
        text = report_markdown(self.payload, self.notes, chart)
        write_atomically(self.out / "report.md", lambda tmp: Path(tmp).write_text(text))


def repair_note(fixed, cfg) -> str:
    """The repair row's note: budget, the start chosen by the probes (if any) and the
    learning rate (with the probes that chose it, if any)."""
    note = f"{cfg.repair_frames} frames, {cfg.repair_epochs} epochs"
    if fixed.probe_val_loss:
        start = "the default's pick" if fixed.start == "given" else fixed.start
        losses = ", ".join(f"{'pick' if k == 'given' else k} {v:.4g}"
                           for k, v in fixed.probe_val_loss.items())
        finals = ", ".join(f"{'pick' if k == 'given' else k} {v:.4g}"
                           for k, v in fixed.final_probe_val_loss.items())
        note += (f", from {start} (validation loss after a {cfg.repair_probe_epochs}-epoch "
                 f"probe: {losses}; the best again for {2 * cfg.repair_probe_epochs} "
                 f"epochs: {finals}; probes {fixed.probe_seconds:.0f} s)")
    if fixed.lr_probe_val_loss:
        rates = ", ".join(f"{k:g} {v:.4g}" for k, v in fixed.lr_probe_val_loss.items())
        note += (f"; lr {fixed.options.lr:g} chosen on validation ({rates} after "
                 f"{2 * max(1, cfg.repair_probe_epochs)}-epoch probes)")
    else:
        note += f"; lr {fixed.options.lr:g}"
    return note


def _given_model(path: str) -> tuple[Any, float | None, str]:
    """(model, its recorded training wall seconds, note) of a given checkpoint."""
    from .checkpoint import load_checkpoint

    model, meta = load_checkpoint(path)
    seconds = meta.get("wall_seconds")
    epochs = (meta.get("metrics") or {}).get("epochs_run")
    return model, None if seconds is None else float(seconds), (
        f"given: {path}" + (f" ({epochs} epochs, trained elsewhere)" if epochs else
                            " (trained elsewhere)"))


def _file_name(system: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in system)


def run(cfg: ExperimentConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run the experiment ``cfg`` describes (module docstring); returns the results
    (also in ``cfg.out/results.json``). Ctrl-C keeps the rows finished so far.

    A foundation named by an adapter (``chgnet``, ``sevenn-0``: :mod:`gffmerge.adapters`)
    becomes a checkpoint in ``cfg.out/checkpoints`` first (references fitted to the systems)."""
    from dataclasses import replace

    from . import adapters

    if cfg.foundation in adapters.names():
        path = adapters.foundation_checkpoint(cfg.foundation, cfg.systems,
                                              Path(cfg.out) / "checkpoints", seed=cfg.seed,
                                              max_frames=cfg.max_frames)
        cfg = replace(cfg, foundation=str(path))
    adapters.enable_for(cfg.foundation)
    return _Experiment(cfg, progress).run()


# ---------------------------------------------------------------- report and chart
