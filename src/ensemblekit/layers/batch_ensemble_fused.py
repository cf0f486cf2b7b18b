"""The BatchEnsemble convolution as one autograd node with a hand-written backward (the fast path).

Forward (folded batch ``[M·B, C_in, H, W]``, member i = rows i·B .. (i+1)·B − 1, one convolution):

    y = conv((x ⊙ r_i), W) ⊙ s_i + b_i

Plain autograd of this composition materialises two full-size products per layer in the backward only to
reduce them to the fast-weight gradients, Σ g ⊙ y for s and Σ G ⊙ x for r (G the gradient at the conv input),
and keeps x, x ⊙ r and y alive for it. The backward here instead uses the member weight W_i = W ⊙ (s_i r_iᵀ):
member i's output is conv(x_i, W_i), so with Γ_i = ∂L/∂W_i (the weight gradient of member i's rows, computed
from x_i and the output gradient g_i)

    ∂L/∂W   = Σ_i Γ_i ⊙ (s_i r_iᵀ)
    ∂L/∂s_i = Σ_{in, k} Γ_i ⊙ W ⊙ r_i           (r_i broadcast over input channels)
    ∂L/∂r_i = Σ_{out, k} Γ_i ⊙ W ⊙ s_i           (s_i broadcast over output channels)
    ∂L/∂x   = r_i ⊙ conv_input_grad(g ⊙ s_i, W)  (one call over the folded batch)
    ∂L/∂b_i = Σ_{rows of i, h, w} g

so the only full-size elementwise passes are x ⊙ r and y ⊙ s forward and g ⊙ s and G ⊙ r backward (half of
plain autograd's), only x is saved, and the weight gradient is split into M calls over B rows each (the same
FLOPs as one call over M·B rows). Gradients equal plain autograd's to float rounding (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

_conv_backward = torch.ops.aten.convolution_backward


def _rows(values: torch.Tensor, rows: int) -> torch.Tensor:
    """Per-member vectors ``[M, C]`` as per-row scales ``[M·B, C, 1, 1]``."""
    return values.repeat_interleave(rows // values.shape[0], dim=0)[:, :, None, None]


def _weight_grads(gamma: torch.Tensor, weight: torch.Tensor, r: torch.Tensor, s: torch.Tensor, need_w: bool):
    """Slow and fast gradients from the member weight gradients Γ_i = ∂L/∂W_i (``gamma``, ``[M, out, in, k, k]``).

    ∂L/∂W = Σ_i Γ_i ⊙ (s_i r_iᵀ), ∂L/∂s_i = Σ_{in,k} Γ_i ⊙ W ⊙ r_i, ∂L/∂r_i = Σ_{out,k} Γ_i ⊙ W ⊙ s_i.
    Returns ``(grad_w or None, grad_r, grad_s)``.
    """
    grad_w = (gamma * (s[:, :, None] * r[:, None, :])[..., None, None]).sum(0) if need_w else None
    k = (gamma * weight).sum(dim=(3, 4))  # Σ_k Γ_i ⊙ W, [M, out, in]
    return grad_w, (k * s[:, :, None]).sum(1), (k * r[:, None, :]).sum(2)


class BatchEnsembleConvFunction(torch.autograd.Function):
    """``apply(x, weight, r, s, bias, stride, padding)`` -> ``[M·B, C_out, H', W']`` (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, r, s, bias, stride: int, padding: int):
        rows = x.shape[0]
        if rows % r.shape[0]:
            raise ValueError(f"a BatchEnsemble layer needs the batch tiled M={r.shape[0]} times, got {rows} rows")
        y = F.conv2d(x * _rows(r, rows), weight, None, stride, padding)
        y.mul_(_rows(s, rows))
        if bias is not None:
            y.add_(_rows(bias, rows))
        ctx.save_for_backward(x, weight, r, s)
        ctx.conv = (stride, padding, bias is not None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, r, s = ctx.saved_tensors
        stride, padding, has_bias = ctx.conv
        members, rows = r.shape[0], x.shape[0]
        per = rows // members
        conv_args = ([stride, stride], [padding, padding], [1, 1], False, [0, 0], 1)
        need_x, need_w, need_r, need_s, need_b = ctx.needs_input_grad[:5]
        grad_x = grad_w = grad_r = grad_s = grad_b = None
        if need_x:
            grad_y = grad * _rows(s, rows)
            grad_x = _conv_backward(grad_y, x, weight, None, *conv_args, [True, False, False])[0]
            grad_x.mul_(_rows(r, rows))
        if need_w or need_r or need_s:
            gamma = torch.stack(  # Γ_i = ∂L/∂W_i, [M, out, in, k, k]
                [
                    _conv_backward(grad[p], x[p], weight, None, *conv_args, [False, True, False])[1]
                    for p in (slice(i * per, (i + 1) * per) for i in range(members))
                ]
            )
            grad_w, grad_r, grad_s = _weight_grads(gamma, weight, r, s, need_w)
        if has_bias and need_b:
            grad_b = grad.view(members, per, *grad.shape[1:]).sum(dim=(1, 3, 4))
        return grad_x, grad_w, grad_r if need_r else None, grad_s if need_s else None, grad_b, None, None


class BatchEnsembleMemberWeightConvFunction(torch.autograd.Function):
    """The same layer computed with member weights: ``apply(x, weight, r, s, bias, stride, padding)``.

    Member i's rows are convolved with its own weight W_i = W ⊙ (s_i r_iᵀ) (formed once per step, a weight-sized
    product), y_i = conv(x_i, W_i) + b_i, so no full-size elementwise pass runs at all: M convolutions over B rows
    each instead of one over M·B rows plus the x ⊙ r and y ⊙ s passes. The backward is one call per member that
    returns both ∂L/∂x_i and Γ_i = ∂L/∂W_i; the slow- and fast-weight gradients follow from Γ_i exactly as in
    :class:`BatchEnsembleConvFunction`. The FLOPs are the folded form's; which is faster depends on the device and
    on how well one large convolution beats M smaller ones (``benchmarks/bench_batch_ensemble.py`` measures both).
    """

    @staticmethod
    def forward(ctx, x, weight, r, s, bias, stride: int, padding: int):
        members, rows = r.shape[0], x.shape[0]
        if rows % members:
            raise ValueError(f"a BatchEnsemble layer needs the batch tiled M={members} times, got {rows} rows")
        per = rows // members
        member_weights = weight.unsqueeze(0) * (s[:, :, None] * r[:, None, :])[..., None, None]
        y = torch.cat(
            [F.conv2d(x[i * per : (i + 1) * per], member_weights[i], None, stride, padding) for i in range(members)]
        )
        if bias is not None:
            y.add_(_rows(bias, rows))
        ctx.save_for_backward(x, weight, r, s, member_weights)
        ctx.conv = (stride, padding, bias is not None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, r, s, member_weights = ctx.saved_tensors
        stride, padding, has_bias = ctx.conv
        members, rows = r.shape[0], x.shape[0]
        per = rows // members
        conv_args = ([stride, stride], [padding, padding], [1, 1], False, [0, 0], 1)
        need_x, need_w, need_r, need_s, need_b = ctx.needs_input_grad[:5]
        grad_x = grad_w = grad_r = grad_s = grad_b = None
        want_w = need_w or need_r or need_s
        parts_x, parts_w = [], []
        for i in range(members):
            p = slice(i * per, (i + 1) * per)
            gx, gw, _ = _conv_backward(grad[p], x[p], member_weights[i], None, *conv_args, [need_x, want_w, False])
            parts_x.append(gx)
            parts_w.append(gw)
        if need_x:
            grad_x = torch.cat(parts_x)
        if want_w:
            grad_w, grad_r, grad_s = _weight_grads(torch.stack(parts_w), weight, r, s, need_w)
        if has_bias and need_b:
            grad_b = grad.view(members, per, *grad.shape[1:]).sum(dim=(1, 3, 4))
        return grad_x, grad_w, grad_r if need_r else None, grad_s if need_s else None, grad_b, None, None
