"""Learning-rate schedule and optimizer: IRN's poly schedule with SGD.

IRN's ``PolyOptimizer`` sets, before update ``t`` (counting from 0) of ``T`` in total,
``lr_t = lr_0 * (1 - t / T) ** 0.9`` for every parameter group, and stops decaying after ``T``.
Here that is a :class:`torch.optim.lr_scheduler.LambdaLR` stepped once per update.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from wsss.errors import ConfigError

__all__ = ["build_sgd", "check_momentum", "poly_factor", "poly_lr_scheduler"]


def poly_factor(step: int, max_steps: int, power: float = 0.9) -> float:
    """``(1 - step / max_steps) ** power``, held at its last value after ``max_steps``.

    IRN only updates the learning rate while ``step < max_steps``, so extra steps keep the last
    scheduled value rather than reaching zero.
    """
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    step = min(max(step, 0), max_steps - 1)
    return (1.0 - step / max_steps) ** power


def poly_lr_scheduler(optimizer: torch.optim.Optimizer, max_steps: int, power: float = 0.9) -> LambdaLR:
    """Poly decay for every parameter group; call ``.step()`` after each ``optimizer.step()``."""
    return LambdaLR(optimizer, lambda step: poly_factor(step, max_steps, power))


def build_sgd(
    groups: Sequence[tuple[Iterable[nn.Parameter], float]],
    lr: float,
    *,
    weight_decay: float = 1e-4,
    momentum: float = 0.0,
    nesterov: bool = False,
    reference_momentum_quirk: bool = False,
) -> torch.optim.SGD:
    """SGD over parameter groups, each with a learning-rate multiplier.

    Args:
        groups: ``(parameters, lr_multiplier)`` pairs, e.g. ``[(backbone, 1.0), (head, 10.0)]``.
            Groups with no parameters are dropped.
        lr: base learning rate.
        weight_decay: L2 penalty for every group.
        momentum: SGD momentum (IRN's evident intent: none, so 0).
        nesterov: Nesterov momentum.
        reference_momentum_quirk: reproduce IRN exactly: its ``PolyOptimizer`` passes the weight
            decay as SGD's third positional argument, which is ``momentum``, so the reference
            trains with momentum = weight decay (1e-4) on top of the groups' own weight decay.
            Overrides ``momentum``.

    Returns:
        The optimizer, its groups carrying ``lr = lr * multiplier``.
    """
    param_groups = []
    for params, multiplier in groups:
        params = [p for p in params if p.requires_grad]
        if params:
            param_groups.append({"params": params, "lr": lr * multiplier, "weight_decay": weight_decay})
    if not param_groups:
        raise ValueError("no trainable parameters")
    if reference_momentum_quirk:
        momentum, nesterov = weight_decay, False
    return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov)


def check_momentum(config: Any, section: str) -> None:
    """Refuse a momentum the reference's momentum quirk would silently replace.

    With ``reference_momentum_quirk`` SGD's momentum is the weight decay (IRN's
    ``PolyOptimizer``), so a ``momentum`` or ``nesterov`` given beside it would have no effect.
    """
    given = ([f"{section}.momentum={config.momentum:g}"] if config.momentum != 0 else []) + (
        [f"{section}.nesterov=true"] if config.nesterov else [])
    if config.reference_momentum_quirk and given:
        raise ConfigError(
            f"{' and '.join(given)} would have no effect: {section}.reference_momentum_quirk is true (IRN's "
            f"SGD momentum = weight decay); set {section}.reference_momentum_quirk=false to use them")
