"""The three networks: sizes, original key names, and the fused forward against the reference."""

import pytest
import torch

from quadra_pipeline.model.networks import NetworkTrio

ORIGINAL_KEYS = [
    f"{layer}.{name}"
    for i in (1, 2, 3)
    for layer, names in ((f"fc{i}", ("weight", "bias")), (f"lif{i}", ("threshold", "graded_spikes_factor", "reset_mechanism_val", "beta")))
    for name in names
]


@pytest.mark.parametrize(("n", "expected"), [(100, (17_124, 7_588, 7_249)), (150, (23_574, 10_838, 9_649))])
def test_parameter_counts_match_spec(n, expected):
    trio = NetworkTrio(n)
    counts = tuple(sum(p.numel() for p in net.parameters()) for net in trio.networks)
    assert counts == expected


def test_state_dict_uses_the_original_names():
    trio = NetworkTrio(100)
    for net in trio.networks:
        assert sorted(net.state_dict()) == sorted(ORIGINAL_KEYS)


def test_fused_forward_matches_each_network_on_its_own():
    torch.manual_seed(0)
    fused, reference = NetworkTrio(40), NetworkTrio(40)
    reference.load_state_dict(fused.state_dict())
    # Inputs big enough that every layer spikes sometimes.
    x = torch.randn(9, 40) * 2.0
    inputs = (x, x.mean(1, keepdim=True).expand_as(x) * 4, x.var(1, keepdim=True).expand_as(x))
    upstream = [torch.randn(9, 40), torch.randn(9, 40), torch.randn(9, 1)]

    outs = fused.forward_all(*inputs)
    refs = [net.forward_reference(inp) for net, inp in zip(reference.networks, inputs)]
    for out, ref in zip(outs, refs):
        assert torch.equal(out, ref)
    assert 0.0 < float(outs[0].detach().mean()) < 1.0

    sum((o * u).sum() for o, u in zip(outs, upstream)).backward()
    sum((r * u).sum() for r, u in zip(refs, upstream)).backward()
    for (name, p), q in zip(fused.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
