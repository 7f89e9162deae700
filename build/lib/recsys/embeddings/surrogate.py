"""The unit step with OptEmbed's surrogate gradient, and random prefix (dimension) lengths.

``binary_step(x)`` is ``1[x > 0]`` in the forward pass; its backward pass uses the
piecewise-linear surrogate derivative of Lyu et al. (CIKM 2022)::

    g(x) = 2 - 4|x|   for |x| <= 0.4
           0.4        for 0.4 < |x| <= 1
           0          beyond

Example:
    >>> x = torch.tensor([0.2, 0.5, 1.5], requires_grad=True)
    >>> binary_step(x).sum().backward()
    >>> x.grad
    tensor([1.2000, 0.4000, 0.0000])
"""

from __future__ import annotations

from typing import Any

import torch


def surrogate_grad(x: torch.Tensor) -> torch.Tensor:
    """``g(x)``: the derivative the backward pass uses for the step function."""
    a = x.abs()
    return torch.where(a <= 0.4, 2 - 4 * a, torch.where(a <= 1, torch.full_like(a, 0.4), torch.zeros_like(a)))


class BinaryStep(torch.autograd.Function):
    """``1[x > 0]`` forward, ``g(x)`` backward (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad_output * surrogate_grad(x)


def binary_step(x: torch.Tensor) -> torch.Tensor:
    """Step function with the surrogate gradient."""
    return BinaryStep.apply(x)


def random_prefix_lengths(shape: tuple[int, ...], high: torch.Tensor, seed: int) -> torch.Tensor:
    """Prefix lengths ``k ~ U{1..high[f]}`` for a ``[B, F]`` shape, from a seeded CPU generator.

    Args:
        shape: ``(B, F)``.
        high: ``[F]`` upper bounds (inclusive), at least 1.
        seed: the draw's seed (the method derives it from its seed and the training step).
    """
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(shape, generator=gen)
    return (u * high.to(torch.float32)).floor().to(torch.int64).clamp_max(high - 1) + 1
