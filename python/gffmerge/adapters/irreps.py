"""e3nn's ``o3.Linear`` as plain ``nn.Linear`` maps, one per output irrep block.

An ``o3.Linear`` maps each input block of irrep ``l`` (``mul_in`` copies, features laid out
``[mul, 2l+1]``) to the output blocks of the same irrep by
``y[z, w, m] = Σ_paths α Σ_u W[u, w] x[z, u, m]``: the same ``mul_in × mul_out`` matrix for
every component ``m``, scaled by the fixed path normalisation ``α``. Written with the
components as rows, ``x`` becomes ``[z·(2l+1), mul_in]`` and the map is an ``nn.Linear``
with weight ``(α W)ᵀ``. :class:`IrrepsLinear` holds one such ``nn.Linear`` per output block
(input blocks of the same irrep concatenated along ``mul``; a bias only on scalar outputs,
as e3nn allows), so gffmerge's collector measures exactly the per-irrep Gram

    G_l = Σ_rows Σ_m x_{:, m} x_{:, m}ᵀ     (mul_in × mul_in)

and the solver fits one matrix per block. A merged block is still one matrix applied to
every ``m``, so the merged map is equivariant by construction. Weights live in the scaled
space ``α W`` (a fixed factor per path, so least squares and ridge toward the mean mean the
same in either space); :meth:`IrrepsLinear.e3nn_weights` returns e3nn's raw ``W``.

:class:`ScaledDense` does the same for e3nn's ``FullyConnectedNet`` layers (``x @ W / c``,
optionally an activation), the radial MLPs of NequIP-style models.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class IrrepsLinear(nn.Module):
    """An equivariant linear map between irreps, as one ``nn.Linear`` per output block.

    ``irreps_in`` / ``irreps_out``: e3nn irreps strings. ``paths[k]`` lists the input block
    indices feeding output block ``k`` (all of irrep ``irreps_out[k]``; empty: the block is
    zero or only a bias), ``biases[k]`` whether it has a bias (scalar blocks only).
    """

    def __init__(self, irreps_in: str, irreps_out: str, paths: list[list[int]],
                 biases: list[bool] | None = None):
        from e3nn import o3

        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        biases = biases or [False] * len(self.irreps_out)
        if len(paths) != len(self.irreps_out) or len(biases) != len(self.irreps_out):
            raise ValueError(f"paths and biases need one entry per output block "
                             f"({len(self.irreps_out)}), got {len(paths)} and {len(biases)}")
        self.paths = [list(map(int, p)) for p in paths]
        self.biases = [bool(b) for b in biases]
        self.blocks = nn.ModuleDict()
        for k, ((mul, ir), src, bias) in enumerate(zip(self.irreps_out, self.paths,
                                                        self.biases)):
            if bias and not (ir.l == 0 and ir.p == 1):
                raise ValueError(f"output block {k} ({mul}x{ir}) is not a scalar: only "
                                 "scalar (0e) outputs may have a bias")
            for i in src:
                if self.irreps_in[i].ir != ir:
                    raise ValueError(f"path {i} -> {k} joins {self.irreps_in[i].ir} to {ir}; "
                                     "a linear map joins equal irreps only")
            if not src:
                if bias:
                    raise ValueError(f"output block {k} has a bias but no input path; give it "
                                     "a path or no bias")
                continue
            width = sum(self.irreps_in[i].mul for i in src)
            self.blocks[str(k)] = nn.Linear(width, mul, bias=bias)
        self._in_slices = self.irreps_in.slices()

    @classmethod
    def from_e3nn(cls, linear) -> IrrepsLinear:
        """The same map as the e3nn ``o3.Linear`` ``linear`` (internal, shared weights)."""
        if not getattr(linear, "internal_weights", True) or not getattr(
                linear, "shared_weights", True):
            raise ValueError("only o3.Linear with internal, shared weights can be converted; "
                             "per-sample weights come from another layer")
        paths: list[list[int]] = [[] for _ in linear.irreps_out]
        biases = [False] * len(linear.irreps_out)
        for ins in linear.instructions:
            if ins.i_in == -1:
                biases[ins.i_out] = True
            else:
                paths[ins.i_out].append(ins.i_in)
        out = cls(str(linear.irreps_in), str(linear.irreps_out), paths, biases)
        out = out.to(linear.weight.device, linear.weight.dtype)
        out.load_e3nn(linear)
        return out

    def _views(self, linear):
        """(instruction, raw weight [mul_in, mul_out]) of every weighted path."""
        out, offset = [], 0
        for ins in linear.instructions:
            if ins.i_in == -1:
                continue
            mul_in, mul_out = ins.path_shape
            out.append((ins, linear.weight[offset:offset + mul_in * mul_out]
                        .reshape(mul_in, mul_out)))
            offset += mul_in * mul_out
        return out

    def load_e3nn(self, linear) -> None:
        """Copy the weights of an ``o3.Linear`` with the same instructions into the blocks."""
        with torch.no_grad():
            for ins, w in self._views(linear):
                block = self.blocks[str(ins.i_out)]
                col = self._column(ins.i_out, ins.i_in)
                mul_in = self.irreps_in[ins.i_in].mul
                block.weight[:, col:col + mul_in] = (ins.path_weight * w).T.to(block.weight)
            if linear.bias.numel():
                k = 0
                for ins in linear.instructions:
                    if ins.i_in == -1:
                        n = self.irreps_out[ins.i_out].dim
                        self.blocks[str(ins.i_out)].bias.copy_(linear.bias[k:k + n])
                        k += n

    def e3nn_weights(self, linear) -> tuple[Tensor, Tensor]:
        """``(weight, bias)`` in e3nn's raw layout for ``linear`` (an ``o3.Linear`` with the
        same instructions): each path's block divided by its normalisation ``α``."""
        weight = torch.empty_like(linear.weight)
        bias = torch.empty_like(linear.bias)
        offset = 0
        for ins in linear.instructions:
            if ins.i_in == -1:
                continue
            mul_in, mul_out = ins.path_shape
            block = self.blocks[str(ins.i_out)].weight.detach()
            col = self._column(ins.i_out, ins.i_in)
            raw = block[:, col:col + mul_in].T / ins.path_weight
            weight[offset:offset + mul_in * mul_out] = raw.reshape(-1).to(weight)
            offset += mul_in * mul_out
        k = 0
        for ins in linear.instructions:
            if ins.i_in == -1:
                n = self.irreps_out[ins.i_out].dim
                bias[k:k + n] = self.blocks[str(ins.i_out)].bias.detach().to(bias)
                k += n
        return weight, bias

    def _column(self, k: int, i_in: int) -> int:
        col = 0
        for i in self.paths[k]:
            if i == i_in:
                return col
            col += self.irreps_in[i].mul
        raise KeyError(f"no path {i_in} -> {k}")

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        if x.shape[-1] != self.irreps_in.dim:
            raise ValueError(f"input has {x.shape[-1]} features, irreps {self.irreps_in} "
                             f"need {self.irreps_in.dim}")
        blocks = [x[..., s].reshape(*lead, mul, ir.dim).transpose(-1, -2)
                  for s, (mul, ir) in zip(self._in_slices, self.irreps_in)]
        out = []
        for k, (mul, ir) in enumerate(self.irreps_out):
            layer = self.blocks[str(k)] if str(k) in self.blocks else None
            if layer is None:
                out.append(x.new_zeros(*lead, mul * ir.dim))
                continue
            src = self.paths[k]
            inp = blocks[src[0]] if len(src) == 1 else torch.cat([blocks[i] for i in src], -1)
            y = layer(inp)  # [..., 2l+1, mul_out]
            out.append(y.transpose(-1, -2).reshape(*lead, mul * ir.dim))
        return torch.cat(out, -1) if out else x.new_zeros(*lead, 0)


class ScaledDense(nn.Module):
    """An e3nn ``FullyConnectedNet`` layer (``x @ W / c``, then ``act · √var_out`` when it has
    an activation) with ``W / c`` held as an ``nn.Linear`` (no bias)."""

    def __init__(self, h_in: int, h_out: int, act=None, var_in: float = 1.0,
                 var_out: float = 1.0):
        super().__init__()
        self.linear = nn.Linear(h_in, h_out, bias=False)
        self.act = act
        self.var_in, self.var_out = float(var_in), float(var_out)

    def _norm(self) -> float:
        if self.act is not None:
            return (self.linear.in_features * self.var_in) ** 0.5
        return (self.linear.in_features * self.var_in / self.var_out) ** 0.5

    @classmethod
    def from_e3nn(cls, layer) -> ScaledDense:
        out = cls(layer.h_in, layer.h_out, layer.act, layer.var_in, layer.var_out)
        out = out.to(layer.weight.device, layer.weight.dtype)
        with torch.no_grad():
            out.linear.weight.copy_((layer.weight / out._norm()).T)
        return out

    def e3nn_weight(self) -> Tensor:
        """e3nn's raw ``[h_in, h_out]`` weight."""
        return self.linear.weight.detach().T * self._norm()

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(x)
        if self.act is not None:
            x = self.act(x) * self.var_out ** 0.5
        return x


def convert_e3nn(module: nn.Module) -> dict[str, str]:
    """Replace, in place, every ``o3.Linear`` under ``module`` by an :class:`IrrepsLinear`
    and every ``FullyConnectedNet`` layer by a :class:`ScaledDense` computing the same map.
    Returns ``{qualified name: kind}`` of what was replaced."""
    from e3nn import o3
    from e3nn.nn._fc import _Layer

    done = {}
    for name, child in list(module.named_modules()):
        if isinstance(child, o3.Linear):
            new, kind = IrrepsLinear.from_e3nn(child), "irreps"
        elif isinstance(child, _Layer):
            new, kind = ScaledDense.from_e3nn(child), "dense"
        else:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        if isinstance(parent, nn.Sequential) or attr.isdigit():
            parent._modules[attr] = new
        else:
            setattr(parent, attr, new)
        done[name] = kind
    return done


def write_e3nn(converted: nn.Module, native: nn.Module) -> None:
    """Copy the weights of a model converted by :func:`convert_e3nn` into ``native``, the
    same model with its e3nn layers (raw e3nn layouts; every other parameter by name)."""
    from e3nn import o3
    from e3nn.nn._fc import _Layer

    mods = dict(converted.named_modules())
    with torch.no_grad():
        for name, layer in native.named_modules():
            if isinstance(layer, o3.Linear):
                w, b = mods[name].e3nn_weights(layer)
                layer.weight.copy_(w)
                if b.numel():
                    layer.bias.copy_(b)
            elif isinstance(layer, _Layer):
                layer.weight.copy_(mods[name].e3nn_weight())
        theirs = native.state_dict()
        for key, value in converted.state_dict().items():
            if key in theirs and theirs[key].shape == value.shape:
                theirs[key].copy_(value)
