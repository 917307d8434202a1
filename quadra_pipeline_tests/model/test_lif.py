"""Our LIF neuron against snntorch's Leaky and against the step-by-step definition."""

import pytest
import snntorch
import torch
from snntorch import surrogate

from quadra_pipeline.model.lif import LIF, lif_rate, lif_reference, lif_spikes

T, B, F = 10, 7, 33


def snntorch_spikes(current: torch.Tensor) -> torch.Tensor:
    """The original's neuron: snntorch Leaky(beta=0.95, fast_sigmoid), membrane from 0 each call."""
    neuron = snntorch.Leaky(beta=0.95, spike_grad=surrogate.fast_sigmoid())
    static = current.dim() == 2
    mem = torch.zeros_like(current if static else current[0])
    out = []
    for t in range(T):
        spk, mem = neuron(current if static else current[t], mem)
        out.append(spk)
    return torch.stack(out)


def currents(static: bool, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (B, F) if static else (T, B, F)
    return (torch.randn(shape, generator=generator) * 0.8 + 0.6).requires_grad_(True)


@pytest.mark.parametrize("static", [False, True], ids=["time-varying", "static"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forward_and_backward_match_snntorch(static, seed):
    ours_in = currents(static, seed)
    theirs_in = ours_in.detach().clone().requires_grad_(True)
    upstream = torch.randn(T, B, F, generator=torch.Generator().manual_seed(100 + seed))

    ours = lif_spikes(ours_in)
    theirs = snntorch_spikes(theirs_in)
    assert 0.05 < float(theirs.detach().mean()) < 0.95, "the inputs must make the neurons both fire and rest"
    assert torch.equal(ours, theirs)

    (ours * upstream).sum().backward()
    (theirs * upstream).sum().backward()
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("static", [False, True], ids=["time-varying", "static"])
def test_rate_matches_reference_mean(static):
    fast_in = currents(static, 7)
    ref_in = fast_in.detach().clone().requires_grad_(True)
    upstream = torch.randn(B, F, generator=torch.Generator().manual_seed(3))
    fast = lif_rate(fast_in)
    ref = lif_reference(ref_in).mean(0)
    assert torch.equal(fast, ref)
    (fast * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(fast_in.grad, ref_in.grad, rtol=1e-5, atol=1e-6)


def test_reset_is_by_subtraction_and_membrane_starts_at_zero():
    # A constant current of 0.6: U = 0.6, 1.17 (spike), 0.6*... reset subtracts 1 the step after.
    current = torch.full((1, 1), 0.6)
    spikes = lif_spikes(current).flatten().tolist()
    assert spikes[0] == 0.0 and spikes[1] == 1.0
    # Calling again gives the same answer: no state between calls.
    assert lif_spikes(current).flatten().tolist() == spikes


def test_buffers_mirror_snntorch_state_dict():
    theirs = snntorch.Leaky(beta=0.95, spike_grad=surrogate.fast_sigmoid()).state_dict()
    ours = LIF().state_dict()
    assert list(ours) == list(theirs)
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype
        assert torch.equal(ours[key], theirs[key])
