"""The networks' Adam: torch's fused CPU kernel, called without `Optimizer.step`'s per-call overhead.

Each network has its own `torch.optim.Adam(fused=True)` (lr 0.001, default betas and eps, no
weight decay; spec section 2). Its state (`step`, `exp_avg`, `exp_avg_sq` per parameter) and
`state_dict()` are torch's, so checkpoints and exact resume work as before. `adam_step` does
what `optimizer.step()` does for such an optimizer (the same lazy state creation, the same
`torch._fused_adam_` kernel, so the same numbers) without its wrapper, which cost more than
the kernel itself (measured at N=150: 42 us a call through `optimizer.step()`, 15 us here;
up to three calls an epoch).
The fused kernel is the same Adam as torch's default one-tensor-at-a-time loop (about 180
small operations an epoch for our three networks) but rounds differently in the last bits.

One more saving: the per-parameter `step` counters (0-d tensors; torch increments them with
`_foreach_add_`, 11 us for six scalars on CPU) are made 0-d views of one small buffer after
the first step, so one `add_` moves them all. They stay separate tensors with their own
values to everything else (`state_dict`, `torch.save`, `optimizer.step()`), and a state that
is replaced (`load_state_dict`) is detected and packed again. Any other configuration, or a
registered step hook, goes through `optimizer.step()`.
"""

from __future__ import annotations

import operator
import weakref

import torch
from torch import Tensor
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

# optimizer -> {group index: (buffer, the step tensors that are views of it, in order)}
_PACKED_STEPS: weakref.WeakKeyDictionary[torch.optim.Optimizer, dict[int, tuple[Tensor, list[Tensor]]]] = (
    weakref.WeakKeyDictionary()
)
_KERNEL_DTYPES = (torch.float32, torch.float64)


def make_adam(params, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, fused=True)


def use_fused_kernel(optimizer: torch.optim.Optimizer) -> None:
    """Make an Adam loaded from an older checkpoint (saved with `fused: None`) run the fused kernel."""
    for group in optimizer.param_groups:
        if "fused" in group:
            group["fused"], group["foreach"] = True, None


def _plain(optimizer: torch.optim.Optimizer) -> bool:
    if type(optimizer) is not torch.optim.Adam:
        return False
    if optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks:
        return False
    if _global_optimizer_pre_hooks or _global_optimizer_post_hooks:
        return False
    if getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None:
        return False
    for group in optimizer.param_groups:
        if not (
            group["fused"] is True
            and not group["amsgrad"]
            and not group["maximize"]
            and not group["capturable"]
            and not group["differentiable"]
            and not group.get("decoupled_weight_decay", False)
            and isinstance(group["lr"], float)
        ):
            return False
    return True


def _supported(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every parameter about to get its state here is one the CPU kernel takes."""
    state = optimizer.state
    return all(
        not param.grad.is_sparse and param.device.type == "cpu" and param.dtype in _KERNEL_DTYPES
        for group in optimizer.param_groups
        for param in group["params"]
        if param.grad is not None and not state.get(param)
    )


def _increment(optimizer: torch.optim.Optimizer, group: int, params: list[Tensor], steps: list[Tensor]) -> None:
    """steps += 1, in one operation once the counters are views of one buffer."""
    packs = _PACKED_STEPS.setdefault(optimizer, {})
    packed = packs.get(group)
    if packed is not None and len(packed[1]) == len(steps) and all(map(operator.is_, packed[1], steps)):
        packed[0].add_(1)
        return
    torch._foreach_add_(steps, 1)
    buffer = torch.stack(steps)
    views = list(buffer.unbind(0))
    for param, view in zip(params, views):
        optimizer.state[param]["step"] = view
    steps[:] = views
    packs[group] = (buffer, views)


def _parameter_count(optimizer: torch.optim.Optimizer) -> int:
    return sum(len(group["params"]) for group in optimizer.param_groups)


def adam_step(optimizer: torch.optim.Optimizer) -> None:
    """`optimizer.step()`, with the same result, for a fused CPU Adam as `make_adam` builds it."""
    if not _plain(optimizer) or (len(optimizer.state) < _parameter_count(optimizer) and not _supported(optimizer)):
        optimizer.step()
        return
    grad_enabled = torch.is_grad_enabled()
    if grad_enabled:
        torch.set_grad_enabled(False)
    try:
        state = optimizer.state
        for index, group in enumerate(optimizer.param_groups):
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                param_state = state[param]
                if len(param_state) == 0:  # Adam._init_group's lazy initialisation (fused branch)
                    param_state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
                    param_state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    param_state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                params.append(param)
                grads.append(grad)
                exp_avgs.append(param_state["exp_avg"])
                exp_avg_sqs.append(param_state["exp_avg_sq"])
                steps.append(param_state["step"])
            if not params:
                continue
            beta1, beta2 = group["betas"]
            _increment(optimizer, index, params, steps)
            torch._fused_adam_(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                [],
                steps,
                amsgrad=False,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=False,
                grad_scale=None,
                found_inf=None,
            )
    finally:
        if grad_enabled:
            torch.set_grad_enabled(True)
