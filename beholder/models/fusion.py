"""Batch norms folded into the convolutions before them, for prediction.

In evaluation a batch norm is a fixed scale and shift of each channel, which the convolution that
feeds it can apply in its own weights and bias (``fuse_conv_bn_eval``): one pass over each
activation map less. On a CPU the default model's networks spend about a quarter of their time in
batch norms (bench/RESULTS.md, throughput-default); ONNX Runtime and OpenVINO fold them the same way.

Which convolution feeds which norm is found by running the network once on a sample and watching
the tensors pass, not by the networks' attribute names, so any timm CNN is folded. The folded network
is then run on the same sample: if it does not give the same features (within float32 rounding), every
change is undone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

AGREEMENT = 1e-4  # the most the folded features may differ, relative to the largest feature


@dataclass
class Folded:
    folded: int  # batch norms folded into their convolutions
    kept: bool  # False: the folded network disagreed and the network was left as it was


def conv_norm_pairs(net: nn.Module, run) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(convolution, batch norm) pairs where the norm reads exactly the convolution's output, as
    ``run()`` (a forward of ``net``) shows."""
    outputs: dict[int, tuple[nn.Conv2d, torch.Tensor]] = {}
    pairs = []

    def seen_conv(conv, inputs, output):
        outputs[id(output)] = (conv, output)  # the tensor held, so that its id is not reused meanwhile

    def seen_norm(norm, inputs):
        fed = outputs.get(id(inputs[0]))
        if fed is not None and fed[1] is inputs[0]:
            pairs.append((fed[0], norm))

    hooks = [m.register_forward_hook(seen_conv) for m in net.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(seen_norm) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return pairs


def after_norm(norm: nn.BatchNorm2d) -> nn.Module:
    """What is left of ``norm`` once folded: timm's BatchNormAct2d keeps its dropout and activation."""
    rest = [module for module in (getattr(norm, "drop", None), getattr(norm, "act", None)) if module is not None]
    return nn.Sequential(*rest) if rest else nn.Identity()


def fold_batch_norms(net: nn.Module, sample: torch.Tensor, forward=None) -> Folded:
    """Fold ``net``'s evaluation batch norms into their convolutions, in place, checked on ``sample``
    (``forward(sample)``, by default ``net(sample)``). A module that appears twice in ``net`` (shared
    weights) and a norm that does not use running statistics are left alone."""
    forward = forward or net
    with torch.no_grad():
        before = forward(sample).float()
    names: dict[int, list[str]] = {}
    for name, module in net.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    replaced: list[tuple[str, nn.Module]] = []
    for conv, norm in conv_norm_pairs(net, lambda: forward(sample)):
        if len(names[id(conv)]) != 1 or len(names[id(norm)]) != 1 or norm.training or norm.running_mean is None:
            continue
        replaced.append((names[id(conv)][0], swap(net, names[id(conv)][0], fuse_conv_bn_eval(conv, norm))))
        replaced.append((names[id(norm)][0], swap(net, names[id(norm)][0], after_norm(norm))))
    with torch.no_grad():
        after = forward(sample).float()
    if (after - before).abs().max() <= AGREEMENT * before.abs().max().clamp_min(1e-12):
        return Folded(len(replaced) // 2, True)
    for name, module in reversed(replaced):
        swap(net, name, module)
    return Folded(0, False)


def swap(net: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` in place of ``net``'s submodule ``name``; returns the one it replaced."""
    parent, _, leaf = name.rpartition(".")
    owner = net.get_submodule(parent) if parent else net
    old = getattr(owner, leaf)
    setattr(owner, leaf, module)
    return old
