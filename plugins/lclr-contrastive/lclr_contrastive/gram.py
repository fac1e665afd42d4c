"""The cosine-similarity matrix of the feature changes, at the least cost.

The loss compares every pair of the M = K·N changes, so its cost is the
``(M, M)`` Gram matrix of ``(M, F)`` rows: M²F multiply-adds, the one part
of the objective that grows faster than the generator. Autograd of
``unit @ unit.T`` after normalising the rows spends three such products and
about eight passes over the rows; :func:`cosine_gram` spends one
(symmetric, only the upper blocks) forward and one backward product, and
normalises the small ``(M, M)`` result instead of the rows:

    S_ij = x_i·x_j / (|x_i| |x_j|)
    dL/dx_i = Σ_j W_ij x_j / (|x_i| |x_j|) − (Σ_j W_ij S_ij) x_i / |x_i|²,
    W = dL/dS + (dL/dS)ᵀ.

Rows whose norm would underflow or overflow in the squares are first
scaled by a power of two (exact), so magnitudes from 1e-30 to 1e30 give the
same similarities. A zero row has similarity 0 to every row and gets no
gradient.
"""

from __future__ import annotations

import torch

# Rows with norms in this range need no rescaling before the products.
_SAFE_NORM = (1e-15, 1e15)
# Row block of the symmetric product: big enough for an efficient GEMM.
_BLOCK = 512


def cosine_gram(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, M)`` cosine similarities of the ``(M, F)`` rows, and the
    ``(M,)`` mask of zero rows (whose similarities are 0)."""
    norm = torch.linalg.vector_norm(x.detach(), dim=1)  # (M,)
    factor = _row_factors(x.detach(), norm)
    if factor is None:
        zero = norm == 0
    else:
        zero = torch.linalg.vector_norm(x.detach(), ord=float("inf"), dim=1) == 0
    return _CosineGram.apply(x, factor, norm), zero


def _row_factors(x: torch.Tensor, norm: torch.Tensor) -> torch.Tensor | None:
    """None when the rows can be used as they are, else ``(M,)`` powers of
    two that bring each row's largest entry into [0.5, 1): exact scaling."""
    low, high = _SAFE_NORM
    if bool(((norm >= low) & (norm <= high)).all()):
        return None  # also no zero rows (nor rows whose squares underflow)
    peak = torch.linalg.vector_norm(x, ord=float("inf"), dim=1)
    _, exponent = torch.frexp(peak)
    return torch.ldexp(torch.ones_like(peak), -exponent)  # (M,)


class _CosineGram(torch.autograd.Function):
    """S = diag(1/|x|) x xᵀ diag(1/|x|), with the backward written out."""

    @staticmethod
    def forward(ctx, x, factor, norm):
        rows = x
        if factor is not None:
            rows = x * factor[:, None]  # (M, F)
            norm = torch.linalg.vector_norm(rows, dim=1)  # (M,)
        inv = torch.where(norm == 0, 0.0, 1.0 / norm)
        sim = symmetric_gram(rows) * inv[:, None] * inv[None, :]  # (M, M)
        ctx.save_for_backward(rows, inv, sim, factor)
        return sim

    @staticmethod
    def backward(ctx, grad):
        rows, inv, sim, factor = ctx.saved_tensors
        w = grad + grad.T  # (M, M)
        r = (w * sim).sum(dim=1) * inv.square()  # (M,)
        w = w * inv[:, None] * inv[None, :]
        d = torch.addmm(rows * -r[:, None], w, rows)  # (M, F)
        if factor is not None:
            d = d * factor[:, None]  # rows = x · factor
        return d, None, None


def symmetric_gram(x: torch.Tensor) -> torch.Tensor:
    """``x @ x.T`` computing only the blocks on and above the diagonal."""
    m = x.shape[0]
    if m <= _BLOCK:
        return x @ x.T
    out = x.new_empty(m, m)
    for a in range(0, m, _BLOCK):
        block = x[a : a + _BLOCK] @ x[a:].T  # (b, M - a)
        out[a : a + _BLOCK, a:] = block
        out[a:, a : a + _BLOCK] = block.T
    return out
