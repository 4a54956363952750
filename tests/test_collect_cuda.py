"""Statistics collected on a GPU equal those collected on the CPU: the stage sums of the
progressive and force-aware passes (value and tangent rows) and a whole progressive merge of
the shipped rMD17 models, in float64 so that the two devices agree to rounding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gffmerge.checkpoint import load_checkpoint
from gffmerge.collect import move_to
from gffmerge.collect.order import mergeable_layers
from gffmerge.collect.progressive import prepare_sources, stage_sums
from gffmerge.data import load_dataset
from gffmerge.methods.progressive import ProgressiveOptions, progressive_merge

pytestmark = pytest.mark.cuda

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ["rmd17/ethanol", "rmd17/malonaldehyde"]
TOL = 1e-9


def _shipped(kind: str, frames: int = 4, batch: int = 2):
    ck = ROOT / "checkpoints" / "rmd17"
    models = [load_checkpoint(ck / f"{kind}_{s.split('/')[1]}.pt")[0].double().eval()
              for s in SYSTEMS]
    train = load_dataset(SYSTEMS).split("train")
    batches = [list(train.for_system(s).subset(frames, seed=0).batches_for(m, batch))
               for s, m in zip(SYSTEMS, models)]
    return models, batches


def _to(models, batches, device):
    return ([m.to(device) for m in models],
            [[move_to(b, device) for b in bs] for bs in batches])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("kind", ["gns", "painn"])
def test_stage_sums_on_cuda_equal_cpu(kind):
    """One-shot value and tangent sums: the accumulators live on the model's device and
    agree with the CPU's."""
    models, batches = _shipped(kind)
    infos = mergeable_layers(models[0])
    names = list(infos)
    out = {}
    for device in ("cpu", "cuda"):
        ms, bs = _to([m for m in models], batches, device)
        srcs = prepare_sources(ms, bs, frames=None, names=names, tangents=True, seed=0,
                               outputs=False)
        out[device] = stage_sums(None, srcs, names, infos, tangents=True)
        models = [m.cpu() for m in ms]
    for k, (cpu, gpu) in enumerate(zip(out["cpu"], out["cuda"])):
        for n in names:
            for field in ("gram", "cross", "tgram", "tcross"):
                a, b = getattr(gpu[n], field), getattr(cpu[n], field)
                assert a.device.type == "cuda", (k, n, field)
                assert _rel(a, b) <= TOL, (k, n, field, _rel(a, b))
            assert gpu[n].rows == cpu[n].rows and gpu[n].trows == cpu[n].trows


@pytest.mark.parametrize("kind", ["gns", "painn"])
def test_progressive_merge_on_cuda_equals_cpu(kind):
    """Stages run the merged-so-far model on the GPU; the merged weights equal the CPU's."""
    models, batches = _shipped(kind)
    opts = ProgressiveOptions(ridge=1e-2, beta=0.0, frames=4)
    cpu = progressive_merge(models, batches, opts, progress=False).model.state_dict()
    ms, bs = _to(models, batches, "cuda")
    gpu = progressive_merge(ms, bs, opts, progress=False).model.state_dict()
    for k in cpu:
        if cpu[k].is_floating_point():
            assert gpu[k].device.type == "cuda", k
            assert torch.isfinite(gpu[k]).all(), k
            assert _rel(gpu[k], cpu[k]) <= 1e-7, (k, _rel(gpu[k], cpu[k]))
