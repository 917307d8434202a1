"""Leaky integrate-and-fire neurons (spec section 1), fast enough to train on a CPU.

The neuron is snntorch's `Leaky(beta=0.95, spike_grad=fast_sigmoid(slope=25))`: reset by
subtraction with the reset signal detached, so the only gradient path through time is
`dU_t/dU_{t-1} = beta`. That makes the backward pass a linear map over time: the gradient
of the input current at step s is sum_{t>=s} beta^(t-s) * dL/dU_t, one small matrix
product for all steps at once. The forward recurrence (which depends on spikes) runs in a
plain loop without autograd bookkeeping. `lif_reference` is the textbook step-by-step form
that autograd differentiates; the tests hold both against each other and against snntorch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

BETA = 0.95
THRESHOLD = 1.0
SURROGATE_SLOPE = 25.0
TIME_STEPS = 10


class LIF(nn.Module):
    """Parameter-free LIF layer; its buffers mirror snntorch's so original checkpoints load."""

    def __init__(self, beta: float = BETA, threshold: float = THRESHOLD) -> None:
        super().__init__()
        # The original checkpoints carry these four scalar buffers per layer.
        self.register_buffer("threshold", torch.as_tensor(threshold))
        self.register_buffer("graded_spikes_factor", torch.as_tensor(1.0))
        self.register_buffer("reset_mechanism_val", torch.as_tensor(0))
        self.register_buffer("beta", torch.as_tensor(beta))


def surrogate_grad(membrane: Tensor, threshold: float = THRESHOLD) -> Tensor:
    """Fast-sigmoid surrogate dS/dU = 1 / (1 + slope * |U - theta|)^2."""
    return (membrane - threshold).abs_().mul_(SURROGATE_SLOPE).add_(1.0).square_().reciprocal_()


def _time_kernel(steps: int, beta: float, dtype: torch.dtype) -> Tensor:
    """K[s, t] = beta^(t-s) for t >= s else 0, so grad_I = K @ grad_U over the time axis."""
    idx = torch.arange(steps)
    power = (idx[None, :] - idx[:, None]).to(dtype)
    return torch.where(power >= 0, torch.as_tensor(beta, dtype=dtype) ** power.clamp(min=0), 0.0)


_KERNELS: dict[tuple[int, float, torch.dtype], Tensor] = {}


def time_kernel(steps: int, beta: float = BETA, dtype: torch.dtype = torch.float32) -> Tensor:
    key = (steps, beta, dtype)
    if key not in _KERNELS:
        _KERNELS[key] = _time_kernel(steps, beta, dtype)
    return _KERNELS[key]


def membrane_pass(inputs: np.ndarray, steps: int, static: bool) -> tuple[np.ndarray, np.ndarray]:
    """Forward recurrence on arrays: membranes U and spikes S (0/1, the inputs' dtype), (T, B, F).

    `inputs` is (T, B, F), or (B, F) when `static`. R_t = S_{t-1} (the reset is the previous
    step's spike), so each step is U = beta*U + I_t - theta*S_prev, S = U > theta,
    evaluated in that order (snntorch's, so the spikes are the same bit for bit). Each step
    writes straight into its slices of U and S: four NumPy calls per step, with positional
    outputs and 0-d array scalars (the cheapest way to call a ufunc). On arrays this small
    the per-call cost is everything, and NumPy's is a fraction of torch's.
    """
    dtype = inputs.dtype
    beta, theta = np.array(BETA, dtype), np.array(THRESHOLD, dtype)
    shape = (steps, *inputs.shape[-2:])
    membranes = np.empty(shape, dtype)
    spikes = np.empty(shape, dtype)
    multiply, add, subtract, greater = np.multiply, np.add, np.subtract, np.greater
    # Step 0 from U = 0 and no reset: beta*0 + I - 0 = I (+0.0 turns a -0.0 into 0.0, as 0 + I does).
    previous, spiked = membranes[0], spikes[0]
    add(inputs if static else inputs[0], np.array(0.0, dtype), previous)
    greater(previous, theta, spiked)
    for t in range(1, steps):
        u, spike = membranes[t], spikes[t]
        multiply(previous, beta, u)
        add(u, inputs if static else inputs[t], u)
        subtract(u, spiked if THRESHOLD == 1.0 else spiked * theta, u)  # the reset, theta * S_{t-1}
        greater(u, theta, spike)
        previous, spiked = u, spike
    return membranes, spikes


def _run_membrane(current: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """`membrane_pass` on a tensor `current` (T, B, F) or static (B, F); torch tensors out."""
    static = current.dim() == 2
    membranes, spikes = membrane_pass(current.detach().numpy(), steps, static)
    return torch.from_numpy(membranes), torch.from_numpy(spikes)


class _LIFFunction(torch.autograd.Function):
    """Spikes of a LIF layer over T steps; optional mean over time (the spike rate)."""

    @staticmethod
    def forward(ctx, current: Tensor, steps: int, rate: bool) -> Tensor:  # type: ignore[override]
        membranes, spikes = _run_membrane(current, steps)
        ctx.save_for_backward(membranes)
        ctx.static = current.dim() == 2
        ctx.rate = rate
        ctx.steps = steps
        return spikes.mean(0) if rate else spikes

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (membranes,) = ctx.saved_tensors
        steps = ctx.steps
        grad_u = surrogate_grad(membranes)
        if ctx.rate:
            grad_u.mul_(grad_out.unsqueeze(0) / steps)
        else:
            grad_u.mul_(grad_out)
        kernel = time_kernel(steps, BETA, membranes.dtype)
        if ctx.static:
            # dU_t/dI = sum_{s<=t} beta^(t-s): a weight per step, summed over steps.
            weights = kernel.sum(0)
            grad_in = torch.tensordot(weights, grad_u, dims=([0], [0]))
        else:
            grad_in = torch.matmul(kernel, grad_u.reshape(steps, -1)).reshape(grad_u.shape)
        return grad_in, None, None


def lif_spikes(current: Tensor, steps: int = TIME_STEPS) -> Tensor:
    """Spikes (T, B, F) of a LIF layer driven by `current` (T, B, F) or static (B, F)."""
    return _LIFFunction.apply(current, steps, False)


def lif_rate(current: Tensor, steps: int = TIME_STEPS) -> Tensor:
    """Mean spike rate over time (B, F) of a LIF layer driven by `current`."""
    return _LIFFunction.apply(current, steps, True)


class _FastSigmoidSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, shifted: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(shifted)
        return (shifted > 0).to(shifted.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (shifted,) = ctx.saved_tensors
        return grad_out / (SURROGATE_SLOPE * shifted.abs() + 1.0) ** 2


def lif_reference(current: Tensor, steps: int = TIME_STEPS) -> Tensor:
    """Step-by-step LIF under plain autograd: the definition the fast path must match."""
    static = current.dim() == 2
    u = torch.zeros_like(current if static else current[0])
    out = []
    for t in range(steps):
        i_t = current if static else current[t]
        reset = (u - THRESHOLD > 0).to(u.dtype).detach()
        u = BETA * u + i_t - reset * THRESHOLD
        out.append(_FastSigmoidSpike.apply(u - THRESHOLD))
    return torch.stack(out)
