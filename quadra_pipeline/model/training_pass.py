"""One training epoch's pass through the three networks, forward and backward by hand.

`QuadraModel.train_items` evaluates every action for every item of an epoch (spec section 4),
then steps the networks that some item chose, on the mean loss of the chosen actions. Through
autograd an epoch was about a hundred small graph nodes and, with one-tensor-at-a-time Adam,
another 180 optimiser operations: at these sizes (B = 11 or 21 items, T = 10 steps, N = 150)
most of the time went to per-operation overhead, not to arithmetic.

Here the forward pass runs without autograd and keeps what the backward pass needs (each LIF
layer's membranes and spikes); the backward pass is written out:

- the loss of one item is l(f) = var(f) + |mean(f) - 0.5|, so dl/df = 2 (f - mean f) / (N - 1)
  + sign(mean f - 0.5) / N, divided by B for the epoch's mean;
- each action's field is an affine function of its network's output (spec section 3), and an
  item's loss reaches only the network of the action it chose (the other rows are zero);
- a LIF layer's backward is `lif.py`'s: the surrogate times the upstream gradient, then one
  small matrix product over time (the reset is detached, so dU_t/dU_{t-1} = beta);
- a Linear layer's is the usual dW = g^T x, db = sum g, dx = g W.

The three networks' LIF layers run as one array each, forward and backward (element-wise,
so fusing them changes nothing); only the Linear layers are per network, and in the backward
pass only for the networks some item chose (the LIF part only on the block of columns that
holds them, `TrioLayout`). The forward pass makes the same calls as
`NetworkTrio.forward_all` and `QuadraModel.action_fields`, so its spike rates and fields are
the same bit for bit; the gradients equal autograd's to float rounding (tests hold both).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .lif import SURROGATE_SLOPE, THRESHOLD, TIME_STEPS, membrane_pass, time_kernel

SYNTROPY_GAIN = 0.25

_F32 = np.float32
_THETA = np.array(THRESHOLD, _F32)
_SLOPE = np.array(SURROGATE_SLOPE, _F32)
_ONE = np.array(1.0, _F32)
_HALF = np.array(0.5, _F32)

_STATIC_WEIGHTS: dict[int, Tensor] = {}


def _static_weights(steps: int) -> Tensor:
    """(1, T): dU_t/dI for a static input I, sum_{s<=t} beta^(t-s) (`lif.py`'s static case)."""
    if steps not in _STATIC_WEIGHTS:
        _STATIC_WEIGHTS[steps] = time_kernel(steps).sum(0, keepdim=True)
    return _STATIC_WEIGHTS[steps]


def _slices(sizes: Sequence[int]) -> list[slice]:
    """Consecutive column ranges of the given sizes."""
    out, start = [], 0
    for size in sizes:
        out.append(slice(start, start + size))
        start += size
    return out


def _surrogate_times(membranes: np.ndarray, upstream: np.ndarray) -> np.ndarray:
    """upstream * dS/dU = upstream / (1 + slope * |U - theta|)^2, in a new array."""
    grad = np.subtract(membranes, _THETA, order="C")
    np.abs(grad, grad)
    np.multiply(grad, _SLOPE, grad)
    np.add(grad, _ONE, grad)
    np.square(grad, grad)
    return np.divide(upstream, grad, grad)


def item_losses(fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """l(f) = var(f) + |mean(f) - 0.5| and mean(f) over the last dimension (`quadra.item_loss`)."""
    n = fields.shape[-1]
    means = np.add.reduce(fields, -1)  # np.mean without its Python wrapper: sum, then / n
    np.divide(means, _F32(n), means)
    centred = np.subtract(fields, means[..., None])
    losses = np.add.reduce(np.square(centred, centred), -1)
    np.divide(losses, _F32(n - 1), losses)
    np.add(losses, np.abs(means - _HALF), losses)
    return losses, means


class TrioLayout:
    """Where each network's columns sit in the fused LIF layers: `hidden[k]` (layers 1 and 2)
    and `outputs[k]` (layer 3) for network k.

    The networks sit in the order nn1, nn3, nn2: nn2 is the one items choose least (under 4%
    of the items in the benchmark's run), so in most epochs the chosen networks' columns are one
    block at the front and the backward pass works on that block only.
    """

    ORDER = (0, 2, 1)

    def __init__(self, params: Sequence[Sequence[Tensor]]) -> None:
        hidden = dict(zip(self.ORDER, _slices([params[k][0].shape[0] for k in self.ORDER])))
        outputs = dict(zip(self.ORDER, _slices([params[k][4].shape[0] for k in self.ORDER])))
        self.hidden = [hidden[k] for k in range(len(params))]
        self.outputs = [outputs[k] for k in range(len(params))]
        self.output_size = sum(params[k][4].shape[0] for k in self.ORDER)

    @staticmethod
    def span(slices: Sequence[slice], networks: Sequence[int]) -> slice:
        """The smallest column range holding the given networks' columns."""
        return slice(min(slices[k].start for k in networks), max(slices[k].stop for k in networks))


class TrainingItems:
    """The items of one `train_items` call and what the actions need of them (fixed across epochs)."""

    def __init__(self, items: Tensor) -> None:
        items = items.detach().to(torch.float32).contiguous()
        self.items = items
        self.count, self.field_size = items.shape
        mean = items.mean(1, keepdim=True)
        var = items.var(1, keepdim=True)
        # The networks' inputs (spec section 3): d, mean(d) * ones, var(d) * ones.
        self.inputs = (items, mean.expand_as(items).contiguous(), var.expand_as(items).contiguous())
        self.items_np = items.numpy()
        self.gain = torch.where(var > 0.1, 0.5, 1.0).numpy()  # (B, 1)
        self.syntropy = (SYNTROPY_GAIN * (0.5 - mean)).numpy()  # (B, 1)
        self.var = var.numpy()  # (B, 1)

    def fields(self, rates: np.ndarray, layout: TrioLayout) -> np.ndarray:
        """f for every item and action, (B, 3, N), from the networks' rates (B, 2N + 1).

        The operations of `QuadraModel.action_fields`, element by element, so the same values.
        """
        d, out = self.items_np, layout.outputs
        fields = np.empty((self.count, 3, self.field_size), _F32)
        update, adjust, penalize = fields[:, 0], fields[:, 1], fields[:, 2]
        np.multiply(self.gain, rates[:, out[0]], update)
        np.add(d, update, update)
        np.multiply(self.syntropy, rates[:, out[1]], adjust)
        np.add(d, adjust, adjust)
        np.multiply(rates[:, out[2]], self.var, penalize)
        np.subtract(d, penalize, penalize)
        return fields

    def rate_gradients(
        self,
        fields: np.ndarray,
        means: np.ndarray,
        chosen: np.ndarray,
        networks: Sequence[int],
        layout: TrioLayout,
        steps: int,
    ) -> np.ndarray:
        """Gradient of the epoch loss (the mean over items of l(f) of the chosen action) with
        respect to the networks' rates, (B, 2N + 1) in `layout`'s column order, already divided
        by T for the rate's mean over time: each row is non-zero only in the columns of the
        network its item chose (`networks`: the distinct chosen actions)."""
        count, n = self.count, self.field_size
        rows = np.arange(count)
        chosen_means = means[rows, chosen][:, None]  # (B, 1)
        # dl/df, scaled by 1 / (B T): the epoch's mean over items and the rate's over steps.
        grad = np.subtract(fields[rows, chosen], chosen_means)
        np.multiply(grad, _F32(2.0 / (n - 1)), grad)
        np.add(grad, np.sign(chosen_means - _HALF) / _F32(n), grad)
        np.multiply(grad, _F32(1.0 / (count * steps)), grad)
        # Each network's factor per row (spec section 3), zero on the rows that chose another:
        # nn1 (f = d + gain * nn1(d)), nn2 (f = d + 0.25 (0.5 - m) nn2(m)), nn3 (f = d - nn3(v) v,
        # so its scalar output gets minus the summed gradient, times v).
        out = np.zeros((count, layout.output_size), _F32)
        chosen = chosen[:, None]
        for network in networks:
            columns = out[:, layout.outputs[network]]
            if network == 0:
                np.multiply(grad, self.gain * (chosen == 0), columns)
            elif network == 1:
                np.multiply(grad, self.syntropy * (chosen == 1), columns)
            else:
                np.multiply(np.add.reduce(grad, 1, keepdims=True), -self.var * (chosen == 2), columns)
        return out


class TrioPass:
    """The forward pass of nn1(x1), nn2(x2), nn3(x3) over T steps (as `NetworkTrio.forward_all`,
    with the networks' columns as `TrioLayout` places them), and its backward pass for the
    networks an epoch's items chose."""

    def __init__(
        self,
        params: Sequence[Sequence[Tensor]],
        items: TrainingItems,
        layout: TrioLayout | None = None,
        steps: int = TIME_STEPS,
    ) -> None:
        """`params[k]`: network k's `parameters()`, [fc1.weight, fc1.bias, fc2.weight, ..., fc3.bias]."""
        self.params = params
        self.items = items
        self.steps = steps
        self.layout = layout = layout or TrioLayout(params)
        order, hidden = layout.ORDER, layout.hidden
        with torch.no_grad():
            current1 = torch.cat([F.linear(items.inputs[k], params[k][0], params[k][1]) for k in order], 1)
            self.membranes1, spikes1 = membrane_pass(current1.numpy(), steps, static=True)
            self.spikes1 = s1 = torch.from_numpy(spikes1)
            current2 = torch.cat([F.linear(s1[..., hidden[k]], params[k][2], params[k][3]) for k in order], -1)
            self.membranes2, spikes2 = membrane_pass(current2.numpy(), steps, static=False)
            self.spikes2 = s2 = torch.from_numpy(spikes2)
            current3 = torch.cat([F.linear(s2[..., hidden[k]], params[k][4], params[k][5]) for k in order], -1)
            self.membranes3, spikes3 = membrane_pass(current3.numpy(), steps, static=False)
        rates = np.add.reduce(spikes3, 0)  # the mean over T, as lif_rate computes it: sum, then / T
        self.rates = np.divide(rates, _F32(steps), rates)  # (B, 2N + 1)

    def backward(self, grad_rates: np.ndarray, networks: Sequence[int]) -> list[list[Tensor]]:
        """Parameter gradients (in `parameters()` order) of each network in `networks`, given
        the gradient of the loss with respect to the rates divided by T (`rate_gradients`)."""
        steps, params, layout = self.steps, self.params, self.layout
        count = grad_rates.shape[0]
        rows = steps * count
        kernel = time_kernel(steps)
        # Only the columns of the chosen networks carry a gradient: work on the block holding them.
        outs = layout.span(layout.outputs, networks)
        hids = layout.span(layout.hidden, networks)
        hidden = {k: slice(layout.hidden[k].start - hids.start, layout.hidden[k].stop - hids.start) for k in networks}
        layer3, layer2, layer1 = {}, {}, {}
        with torch.no_grad():
            # Layer 3 (the networks' LIF layers as one), then each chosen network's fc3.
            grad_u = _surrogate_times(self.membranes3[..., outs], grad_rates[:, outs])
            grad_c = torch.mm(kernel, torch.from_numpy(grad_u).view(steps, -1)).view(rows, -1)
            spikes = self.spikes2.view(rows, -1)[:, hids]
            grad_s = torch.zeros(rows, hids.stop - hids.start)  # columns of networks no item chose stay 0
            for k in networks:
                g = grad_c[:, layout.outputs[k].start - outs.start : layout.outputs[k].stop - outs.start]
                layer3[k] = (torch.mm(g.t(), spikes[:, hidden[k]]), g.sum(0))
                torch.mm(g, params[k][4], out=grad_s[:, hidden[k]])
            # Layer 2.
            grad_u = _surrogate_times(self.membranes2[..., hids], grad_s.numpy().reshape(steps, count, -1))
            grad_c = torch.mm(kernel, torch.from_numpy(grad_u).view(steps, -1)).view(rows, -1)
            spikes = self.spikes1.view(rows, -1)[:, hids]
            for k in networks:
                g = grad_c[:, hidden[k]]
                layer2[k] = (torch.mm(g.t(), spikes[:, hidden[k]]), g.sum(0))
                torch.mm(g, params[k][2], out=grad_s[:, hidden[k]])
            # Layer 1: a static input, so dU_t/dI = sum_{s<=t} beta^(t-s), one weight per step.
            grad_u = _surrogate_times(self.membranes1[..., hids], grad_s.numpy().reshape(steps, count, -1))
            grad_c = torch.mm(_static_weights(steps), torch.from_numpy(grad_u).view(steps, -1)).view(count, -1)
            for k in networks:
                g = grad_c[:, hidden[k]]
                layer1[k] = (torch.mm(g.t(), self.items.inputs[k]), g.sum(0))
        return [[*layer1[k], *layer2[k], *layer3[k]] for k in networks]
