"""Hatching: grow a trained MotherNet into a larger member network that computes the same function.

``hatch(mother, member, generator)`` dispatches on the family (:mod:`.hatch_resnet`, :mod:`.hatch_vgg`,
:mod:`.hatch_densenet`); all transforms are Net2Net's function-preserving widening and deepening (Chen,
Goodfellow & Shlens, "Net2Net: Accelerating Learning via Knowledge Transfer", ICLR 2016) plus kernel
enlargement by zero padding, as used by MotherNets (Wasay et al., MLSys 2020). They are written here from the
formulas (MotherNets step 5), not ported: public ports re-initialise new units, mis-centre identity kernels
and copy BN statistics incompletely (docs/methods/mothernets.md).

:func:`perturb_` then adds the symmetry-breaking noise of MotherNets' step 6: w <- w + N(0, (lambda * std(w))^2)
for every conv and linear weight, with std(w) measured over the hatched tensor.

Example:
    >>> import torch
    >>> from ensemblekit.models import create_model
    >>> mother, member = create_model("resnet8", width=0.5), create_model("resnet14")
    >>> _ = hatch(mother.eval(), member.eval(), torch.Generator().manual_seed(0))
    >>> x = torch.randn(2, 3, 32, 32)
    >>> bool(torch.allclose(mother(x), member(x), atol=1e-4))
    True
"""

from __future__ import annotations

import torch
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.models.transforms.hatch_densenet import hatch_densenet
from ensemblekit.models.transforms.hatch_resnet import hatch_resnet
from ensemblekit.models.transforms.hatch_vgg import hatch_vgg
from ensemblekit.models.transforms.mother import check_hatchable


def hatch(mother: nn.Module, member: nn.Module, generator: torch.Generator) -> list[nn.BatchNorm2d]:
    """Overwrite ``member``'s weights so that it computes ``mother``'s function (before any noise).

    Parameters of the member that the MotherNet has no counterpart for keep their values except where
    function preservation fixes them (zero-initialised residual branches, identity layers, zero weights on new
    DenseNet channels).

    Args:
        mother: The (trained) MotherNet, a :class:`~ensemblekit.models.Backbone`.
        member: A backbone whose spec is at least as large at every position (:func:`check_hatchable`).
        generator: Seeds the random Net2Net widening maps.

    Returns:
        The BatchNorms of VGG identity layers added by deepening (eval-mode identities with mean 0 / variance 1;
        :func:`refine_identity_bns` can set their statistics from data).
    """
    check_hatchable(mother.spec, member.spec)
    family = mother.spec.family
    if family in ("resnet", "preact_resnet", "wide_resnet"):
        hatch_resnet(mother, member, generator)
        return []
    if family == "vgg":
        return hatch_vgg(mother, member, generator)
    if family == "densenet":
        hatch_densenet(mother, member, generator)
        return []
    raise UserError(f"no hatching for model family {family!r}")


@torch.no_grad()
def perturb_(module: nn.Module, scale: float, generator: torch.Generator) -> None:
    """Add N(0, (scale * std(W))^2) noise to every conv and linear weight W of ``module`` (MotherNets step 6).

    Tensors whose std is 0 (e.g. a zero-initialised residual conv) stay unchanged. ``scale = 0`` is a no-op.
    """
    if scale == 0:
        return
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            w = m.weight
            std = float(w.detach().double().std()) if w.numel() > 1 else 0.0
            if std > 0:
                noise = torch.randn(w.shape, generator=generator, dtype=torch.float64) * (scale * std)
                w.add_(noise.to(device=w.device, dtype=w.dtype))


@torch.no_grad()
def refine_identity_bns(member: nn.Module, bns: list[nn.BatchNorm2d], batches: list[torch.Tensor]) -> None:
    """Set each identity BN's statistics to its input's batch statistics (Net2Net's recipe for BN layers).

    One pass over ``batches`` with every BN in train mode (as in training; dropout off) while each identity BN
    passes its input through unchanged (a forward hook returns the input), so every new BN sees the input it
    will see in training. Afterwards running mean = mu, running variance = sigma^2 (biased, as BN normalises),
    gamma = sqrt(sigma^2 + eps), beta = mu: still exactly the identity in eval mode, and exactly the identity in
    train mode on a batch with those statistics. The other BNs' running statistics are restored afterwards.
    """
    from ensemblekit.models.transforms.ops import identity_bn_

    if not bns or not batches:
        return
    sums: dict[int, list] = {id(bn): [0.0, 0.0, 0] for bn in bns}

    def _hook(bn, inputs, output):
        x = inputs[0].detach().double()
        s = sums[id(bn)]
        s[0] = s[0] + x.sum(dim=(0, 2, 3))
        s[1] = s[1] + (x * x).sum(dim=(0, 2, 3))
        s[2] += x.numel() // x.shape[1]
        return inputs[0]

    norms = [m for m in member.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, [b.clone() for b in m.buffers()]) for m in norms]
    modes = [(m, m.training) for m in member.modules()]
    handles = [bn.register_forward_hook(_hook) for bn in bns]
    try:
        member.eval()
        for m in norms:
            m.train()
        for x in batches:
            member(x)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
        for m, buffers in saved:
            for b, old in zip(m.buffers(), buffers):
                b.copy_(old)
    for bn in bns:
        total, squares, n = sums[id(bn)]
        mean = total / n
        var = (squares / n - mean * mean).clamp_min(0.0)
        identity_bn_(bn, mean.to(bn.running_mean), var.to(bn.running_var))
