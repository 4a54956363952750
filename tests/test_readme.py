"""The README's worked example for structured statistics runs as written."""

import re
from pathlib import Path

import torch

import gffmerge

README = Path(__file__).resolve().parents[1] / "README.md"


def test_structured_layer_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(b for b in blocks if "def gram_parts" in b)
    check = next(b for b in blocks if "check_structured_gram(layer" in b)
    scope: dict = {}
    exec(compile(example + "\n" + check, "README.md", "exec"), scope)
    # and the layer measures the same structured and dense
    layer, args = scope["layer"], scope["args"]

    def forward(module, batch):
        return module(*batch)
    structured = gffmerge.measure(layer, [args], forward=forward, progress=False)
    dense = gffmerge.measure(layer, [args], forward=forward, progress=False, dense=True)
    a, b = structured.models[0].layers[""].gram, dense.models[0].layers[""].gram
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-10)
