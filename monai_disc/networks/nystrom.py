"""Nystrom self-attention (Xiong et al., AAAI 2021) as TransMIL uses it, written to be TorchScript-scriptable.

The maths, parameter names and numbers are those of the ``nystrom-attention`` package that the official
TransMIL code imports (``to_qkv``, ``to_out``, ``res_conv``), so weights trained with either load into the
other; this module drops the package's per-token mask (TransMIL never passes one) and its einops lambdas,
which ``torch.jit.script`` cannot compile, so a TransMIL bundle exports with MONAI's ``ckpt_export`` and
the exported program is right for every bag size.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["NystromAttention", "moore_penrose_iter_pinv"]


def moore_penrose_iter_pinv(x: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """Iterative Moore-Penrose pseudo-inverse of the last two dimensions (Razavi et al. 2014).

    The start ``x^T / (max column sum * max row sum)`` takes its scale over the whole tensor (all batch items
    and heads), as the reference implementation does.

    Args:
        x: (..., m, m) matrices.
        iters: refinement iterations.

    Returns:
        (..., m, m) approximate pseudo-inverses.
    """
    abs_x = torch.abs(x)
    col = abs_x.sum(dim=-1)
    row = abs_x.sum(dim=-2)
    z = x.transpose(-1, -2) / (torch.max(col) * torch.max(row))
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype).unsqueeze(0)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - (xz @ (15 * eye - (xz @ (7 * eye - xz)))))
    return z


class NystromAttention(nn.Module):
    """Multi-head self-attention approximated through ``num_landmarks`` landmark tokens.

    A sequence whose length is not a multiple of ``num_landmarks`` is zero-padded in front; landmarks are the
    means of consecutive groups of queries and keys; the output is ``softmax(Q K_l^T) pinv(softmax(Q_l K_l^T))
    softmax(Q_l K^T) V`` plus, with ``residual``, a depthwise convolution of the values along the sequence.

    Args:
        dim: token width.
        dim_head: width of one head.
        heads: number of heads.
        num_landmarks: landmark tokens.
        pinv_iterations: iterations of :func:`moore_penrose_iter_pinv`.
        residual: add the depthwise value convolution.
        residual_conv_kernel: its kernel length (odd).
        eps: kept for parity with the reference signature (it only served the per-token mask there).
        dropout: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        dim_head: int = 64,
        heads: int = 8,
        num_landmarks: int = 256,
        pinv_iterations: int = 6,
        residual: bool = True,
        residual_conv_kernel: int = 33,
        eps: float = 1e-8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        inner_dim = heads * dim_head
        self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, dim), nn.Dropout(dropout))
        self.residual = residual
        # always a module (TorchScript needs the attribute), used only when `residual`
        self.res_conv = (
            nn.Conv2d(
                heads,
                heads,
                (residual_conv_kernel, 1),
                padding=(residual_conv_kernel // 2, 0),
                groups=heads,
                bias=False,
            )
            if residual
            else nn.Identity()
        )

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.dim_head).transpose(1, 2)  # (B, heads, n, dim_head)

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Output tokens and the three Nystrom factors.

        Args:
            x: tokens (B, n, dim).

        Returns:
            ``out`` (B, n, dim), and ``attn1`` (B, heads, n', m), ``attn2_inv`` (B, heads, m, m), ``attn3``
            (B, heads, m, n') over the front-padded sequence of length n' (a multiple of m).
        """
        n = x.shape[1]
        m = self.num_landmarks
        remainder = n % m
        if remainder > 0:
            x = F.pad(x, (0, 0, m - remainder, 0), value=0.0)
        b, n_padded, _ = x.shape
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        q = q * self.scale

        group = (n + m - 1) // m  # tokens per landmark
        q_landmarks = q.reshape(b, self.heads, n_padded // group, group, self.dim_head).sum(dim=3) / group
        k_landmarks = k.reshape(b, self.heads, n_padded // group, group, self.dim_head).sum(dim=3) / group

        attn1 = (q @ k_landmarks.transpose(-1, -2)).softmax(dim=-1)
        attn2 = (q_landmarks @ k_landmarks.transpose(-1, -2)).softmax(dim=-1)
        attn3 = (q_landmarks @ k.transpose(-1, -2)).softmax(dim=-1)
        attn2_inv = moore_penrose_iter_pinv(attn2, self.pinv_iterations)

        out = (attn1 @ attn2_inv) @ (attn3 @ v)
        if self.residual:
            out = out + self.res_conv(v)
        out = out.transpose(1, 2).reshape(b, n_padded, self.heads * self.dim_head)
        out = self.to_out(out)[:, n_padded - n :]
        return out, attn1, attn2_inv, attn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: tokens (B, n, dim). Returns: tokens (B, n, dim)."""
        return self.attention(x)[0]
