"""Checkpoints: the original's format loads; ours resumes exactly; bad files fail clearly."""

import os

import pytest
import torch
from torch import nn

from quadra_pipeline.model import CheckpointError, FieldTrainer, QuadraModel, load_checkpoint, probe, save_checkpoint
from quadra_pipeline.model.checkpoint import file_sha256

HIDDEN = {"nn1": 64, "nn2": 32, "nn3": 48}


def original_state_dict(n: int, hidden: int, out: int, generator: torch.Generator) -> dict:
    """A state dict as the original (snntorch Leaky layers) saved it: fcK.* and lifK.* buffers."""
    state = {}
    for k, (fan_in, fan_out) in enumerate(((n, hidden), (hidden, hidden), (hidden, out)), start=1):
        bound = 1 / fan_in**0.5
        state[f"fc{k}.weight"] = (torch.rand(fan_out, fan_in, generator=generator) * 2 - 1) * bound
        state[f"fc{k}.bias"] = (torch.rand(fan_out, generator=generator) * 2 - 1) * bound
        state[f"lif{k}.threshold"] = torch.tensor(1.0)
        state[f"lif{k}.graded_spikes_factor"] = torch.tensor(1.0)
        state[f"lif{k}.reset_mechanism_val"] = torch.tensor(0)
        state[f"lif{k}.beta"] = torch.tensor(0.95)
    return state


def write_original(path, n: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    payload = {
        "nn1": original_state_dict(n, 64, n, generator),
        "nn2": original_state_dict(n, 32, n, generator),
        "nn3": original_state_dict(n, 48, 1, generator),
        "field": 0.1 * torch.randn(n, generator=generator),
        "q_table": {"0.0": {"update_field": 9.7, "adjust_syntropy": 8.1, "penalize_variance": 7.9}, "-0.0": {"update_field": 1.0}},
    }
    torch.save(payload, path)
    return payload


@pytest.mark.parametrize(("n", "size_kb"), [(100, 150), (150, 198)])
def test_loads_the_original_format(tmp_path, n, size_kb):
    path = tmp_path / f"original_{n}.pth"
    payload = write_original(path, n)
    assert abs(path.stat().st_size / 1024 - size_kb) < 0.1 * size_kb  # the size the spec reports
    loaded = load_checkpoint(path)
    assert loaded.format == "original" and loaded.field_size == n and loaded.trainer is None
    assert torch.equal(loaded.model.networks.nn1.fc1.weight, payload["nn1"]["fc1.weight"])
    assert torch.equal(loaded.model.networks.nn3.fc3.bias, payload["nn3"]["fc3.bias"])
    assert torch.equal(loaded.model.field0, payload["field"])
    assert loaded.model.q_table.q("0.0") == [9.7, 8.1, 7.9]
    assert loaded.model.q_table.q("-0.0") == [1.0, 0.0, 0.0]
    result = probe(loaded.model)
    assert all(0 <= v < 5 for v in (result.update_field, result.adjust_syntropy, result.penalize_variance))


def test_original_format_matches_a_module_built_like_the_original(tmp_path):
    """Cross-check key names against snntorch-built networks, as the original defined them."""
    import snntorch
    from snntorch import surrogate

    class Original(nn.Module):
        def __init__(self, n, hidden, out):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(n, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, out)
            grad = surrogate.fast_sigmoid()
            self.lif1 = snntorch.Leaky(beta=0.95, spike_grad=grad)
            self.lif2 = snntorch.Leaky(beta=0.95, spike_grad=grad)
            self.lif3 = snntorch.Leaky(beta=0.95, spike_grad=grad)

    nets = {"nn1": Original(100, 64, 100), "nn2": Original(100, 32, 100), "nn3": Original(100, 48, 1)}
    payload = {name: net.state_dict() for name, net in nets.items()}
    payload.update(field=torch.zeros(100), q_table={})
    torch.save(payload, tmp_path / "snn.pth")
    loaded = load_checkpoint(tmp_path / "snn.pth")
    assert torch.equal(loaded.model.networks.nn2.fc2.weight, nets["nn2"].fc2.weight)


def make_trainer(n=30, seed=3):
    return FieldTrainer(QuadraModel(n, seed=seed))


TEXTS = [
    ["alpha beta gamma delta epsilon zeta", "eta theta iota kappa , lambda mu"],
    ["nu xi omicron pi rho sigma tau", "upsilon phi chi psi omega @-@ again"],
    ["one two three four five six seven", "eight nine ten eleven twelve thirteen"],
]


def strip_time(metrics):
    return {k: v for k, v in metrics.as_dict().items() if k != "batch_seconds"}


def test_resume_continues_exactly(tmp_path):
    straight = make_trainer()
    expected = [strip_time(straight.step(TEXTS[i % 3])) for i in range(6)]

    first = make_trainer()
    got = [strip_time(first.step(TEXTS[i % 3])) for i in range(3)]
    save_checkpoint(tmp_path / "ck.pt", first, {"seed": 3}, {"rows_consumed": 30})
    del first
    loaded = load_checkpoint(tmp_path / "ck.pt")
    assert loaded.format == "quadra-pipeline" and loaded.progress == {"rows_consumed": 30}
    got += [strip_time(loaded.trainer.step(TEXTS[i % 3])) for i in range(3, 6)]
    assert got == expected


def test_our_checkpoint_keeps_the_original_keys_and_loads_weights_only(tmp_path):
    trainer = make_trainer()
    trainer.step(TEXTS[0])
    digest = save_checkpoint(tmp_path / "ck.pt", trainer)
    assert digest == file_sha256(tmp_path / "ck.pt")
    raw = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert {"nn1", "nn2", "nn3", "field", "q_table", "format", "optimizers", "rng_state", "trainer"} <= set(raw)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# Bad files -----------------------------------------------------------------------------------


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.pt"
    trainer = make_trainer()
    trainer.step(TEXTS[0])
    save_checkpoint(path, trainer)
    return path


def expect_error(path, *fragments):
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message and "Traceback" not in message
    if before is not None:
        assert path.read_bytes() == before  # loading never changes the file
    return message


def test_truncated_file(good):
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    expect_error(good, "not a readable checkpoint")


def test_one_flipped_byte_inside_a_tensor_is_caught(good):
    """torch.load does not check the archive's CRCs: a changed weight byte would load silently."""
    import zipfile

    with zipfile.ZipFile(good) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)  # the biggest tensor's storage
    data = bytearray(good.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2] ^= 0x01
    good.write_bytes(bytes(data))
    expect_error(good, "checksum mismatch")


def test_corrupt_bytes(good):
    data = bytearray(good.read_bytes())
    for i in range(200, len(data), 97):
        data[i] ^= 0xFF
    good.write_bytes(bytes(data))
    expect_error(good, "not a readable checkpoint")


def test_not_a_checkpoint_text_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello, I am not a checkpoint\n")
    expect_error(path, "not a torch checkpoint file")
    path.write_bytes(b'{"nn1": [1, 2, 3]}')
    expect_error(path, "not a torch checkpoint file")
    path.write_bytes(os.urandom(4096).replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
    expect_error(path, "not a torch checkpoint file")


def test_empty_missing_and_directory(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.touch()
    expect_error(empty, "empty")
    expect_error(tmp_path / "missing.pt", "no such file")
    expect_error(tmp_path, "directory")


def test_torch_file_of_the_wrong_kind(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    expect_error(path, "not a Quadra Matrix checkpoint", "list")
    other = tmp_path / "other.pt"
    torch.save({"model": torch.zeros(3)}, other)
    expect_error(other, "missing nn1, nn2, nn3, field, q_table")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"nn1": Evil()}, path)
    expect_error(path, "refusing to load")


@pytest.mark.parametrize("n", [100, 150])
def test_wrong_shape(tmp_path, n):
    path = tmp_path / "shape.pth"
    payload = write_original(path, n)
    payload["nn2"]["fc2.weight"] = torch.zeros(32, 31)
    torch.save(payload, path)
    expect_error(path, "nn2.fc2.weight has shape [32, 31], expected [32, 32]")


def test_missing_key_and_non_finite_weights(tmp_path):
    path = tmp_path / "keys.pth"
    payload = write_original(path, 100)
    del payload["nn1"]["lif2.beta"]
    torch.save(payload, path)
    expect_error(path, "missing nn1.lif2.beta")
    payload = write_original(path, 100)
    payload["nn3"]["fc1.weight"][0, 0] = float("nan")
    torch.save(payload, path)
    expect_error(path, "nn3.fc1.weight holds non-finite values")


def test_neuron_constants_must_be_the_models(tmp_path):
    path = tmp_path / "beta.pth"
    payload = write_original(path, 100)
    payload["nn2"]["lif1.beta"] = torch.tensor(0.9)
    torch.save(payload, path)
    expect_error(path, "nn2.lif1.beta is 0.899999", "use 0.949999")


def test_damaged_training_state_names_the_file(good):
    payload = torch.load(good, weights_only=True)
    payload["trainer"]["psi"] = torch.zeros(7)
    torch.save(payload, good)
    expect_error(good, "training state is damaged", "field size")
    payload["trainer"]["psi"] = 3.0
    torch.save(payload, good)
    expect_error(good, "training state is damaged")
    payload["config"] = [1, 2]
    torch.save(payload, good)
    expect_error(good, "'config' must be a dict")
    payload["config"] = {"seed": "abc"}
    torch.save(payload, good)
    expect_error(good, "not a number")
    payload["config"] = {}
    payload["field"] = torch.full((30,), float("nan"))
    torch.save(payload, good)
    expect_error(good, "'field' holds non-finite values")


def test_bad_field_and_q_table(tmp_path):
    path = tmp_path / "field.pth"
    payload = write_original(path, 100)
    payload["field"] = torch.zeros(10, 10)
    torch.save(payload, path)
    expect_error(path, "'field' must be a 1-D tensor")
    payload = write_original(path, 100)
    payload["q_table"] = [1, 2]
    torch.save(payload, path)
    expect_error(path, "'q_table' must be a dict")


def test_failed_save_leaves_the_previous_checkpoint(good, monkeypatch):
    before = good.read_bytes()

    def exploding_save(obj, handle, *args, **kwargs):
        handle.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_checkpoint(good, make_trainer())
    assert good.read_bytes() == before
    assert [p.name for p in good.parent.iterdir()] == [good.name]
