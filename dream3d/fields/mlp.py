"""Small fully-connected networks and the activations used by the fields.

Activation names (:func:`get_activation`): ``none``, ``relu``, ``softplus``, ``shifted_softplus``
(``softplus(x - 1)``, for density), ``trunc_exp`` (``exp`` whose gradient uses ``exp(min(x, 15))``),
``sigmoid``, ``scale_-11_01`` (``(x + 1) / 2``), plus ``exp``, ``tanh`` and ``silu``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MLP", "get_activation", "trunc_exp", "TruncExp", "ACTIVATIONS"]

TRUNC_EXP_MAX = 15.0


class _TruncExpFn(torch.autograd.Function):
    """Forward exp(x); backward grad * exp(clamp(x, max=15)).

    The backward is written with ordinary differentiable torch ops, so under ``create_graph=True`` it is
    recorded and double backward works (second derivative: ``grad * exp(x)`` for x < 15, 0 above).
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=TRUNC_EXP_MAX))


def trunc_exp(x: Tensor) -> Tensor:
    """exp(x) with the gradient clamped to exp(15) (Instant-NGP / threestudio "trunc_exp")."""
    return _TruncExpFn.apply(x)


class TruncExp(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return trunc_exp(x)


class ShiftedSoftplus(nn.Module):
    """softplus(x - shift); the default shift 1 starts density low (softplus(-1) ~ 0.31)."""

    def __init__(self, shift: float = 1.0) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(x - self.shift)

    def extra_repr(self) -> str:
        return f"shift={self.shift}"


class Scale11To01(nn.Module):
    """Maps [-1,1] to [0,1]: (x + 1) / 2."""

    def forward(self, x: Tensor) -> Tensor:
        return (x + 1.0) * 0.5


class Exp(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(x)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "none": nn.Identity,
    "identity": nn.Identity,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "shifted_softplus": ShiftedSoftplus,
    "trunc_exp": TruncExp,
    "exp": Exp,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "scale_-11_01": Scale11To01,
}


def get_activation(name: Optional[Union[str, nn.Module]]) -> nn.Module:
    """Activation module by name (None -> identity; an nn.Module is returned as is)."""
    if name is None:
        return nn.Identity()
    if isinstance(name, nn.Module):
        return name
    key = str(name).lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[key]()


class MLP(nn.Module):
    """Small fully-connected net: x [..., n_input] -> [..., n_output].

    ``n_hidden_layers`` hidden layers of width ``n_hidden``, each followed by ``activation``; then a linear
    output layer followed by ``output_activation``. ``n_hidden_layers=0`` is a single linear layer.
    """

    def __init__(
        self,
        n_input: int,
        n_output: int,
        n_hidden: int = 64,
        n_hidden_layers: int = 1,
        activation: Optional[Union[str, nn.Module]] = "relu",
        output_activation: Optional[Union[str, nn.Module]] = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if n_hidden_layers < 0:
            raise ValueError("MLP: n_hidden_layers must be >= 0")
        self.n_input = n_input
        self.n_output = n_output
        layers: list[nn.Module] = []
        width = n_input
        for _ in range(n_hidden_layers):
            layers += [nn.Linear(width, n_hidden, bias=bias), get_activation(activation)]
            width = n_hidden
        layers.append(nn.Linear(width, n_output, bias=bias))
        self.layers = nn.Sequential(*layers)
        self.output_activation = get_activation(output_activation)

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., n_input] -> [..., n_output]."""
        return self.output_activation(self.layers(x))

    def forward_with_input_grad(self, x: Tensor, output: int = 0) -> tuple[Tensor, Tensor]:
        """x: [N, n_input] -> (pre-output-activation y [N, n_output], d y[:, output] / d x [N, n_input]).

        A reverse sweep written with ordinary ops (so it is differentiable w.r.t. the weights at first order);
        hidden activations must be ReLU or identity.
        """
        h, masks, linears = x, [], []
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                h = layer(h)
                linears.append(layer)
            elif isinstance(layer, nn.ReLU):
                masks.append(h > 0)
                h = torch.relu(h)
            elif isinstance(layer, nn.Identity):
                masks.append(None)
            else:
                raise ValueError(f"forward_with_input_grad supports ReLU/identity hidden activations, not {layer}")
        g = linears[-1].weight[output].expand(x.shape[0], -1)  # [N, width]
        for lin, mask in zip(reversed(linears[:-1]), reversed(masks)):
            g = (g * mask if mask is not None else g) @ lin.weight
        return h, g
