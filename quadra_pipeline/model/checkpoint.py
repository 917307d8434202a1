"""Checkpoints: the original's format (spec section 8) in, ours out.

The original saved `{nn1, nn2, nn3, field, q_table}`. Ours keeps those keys, so older tools
can still read the weights, and adds what an exact resume needs: the optimisers, the trainer
state (psi, history, text queue, k, accelerator), the RNG state, the configuration and the
progress through the data. Everything loads with `torch.load(weights_only=True)`.

Every failure to read a file becomes a `CheckpointError` naming the file and the problem.
Writes are atomic (temporary file, fsync, rename), so a failed save never leaves a
half-written checkpoint in place of a good one.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .adam import use_fused_kernel
from .networks import NetworkTrio
from .qlearning import QTable
from .quadra import QuadraModel
from .trainer import FieldTrainer

FORMAT_NAME = "quadra-pipeline"
FORMAT_VERSION = 1
ORIGINAL_KEYS = ("nn1", "nn2", "nn3", "field", "q_table")


class CheckpointError(Exception):
    """A checkpoint cannot be read or written; the message names the file and the problem."""


class _TrainerStateError(ValueError):
    pass


@dataclass
class LoadedCheckpoint:
    path: Path
    format: str  # "original" or "quadra-pipeline"
    model: QuadraModel
    trainer: FieldTrainer | None  # None for the original format (it has no trainer state)
    config: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)

    @property
    def field_size(self) -> int:
        return self.model.field_size


def file_sha256(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# Saving -----------------------------------------------------------------------------------


def checkpoint_payload(trainer: FieldTrainer, config: Mapping[str, Any], progress: Mapping[str, Any]) -> dict[str, Any]:
    model = trainer.model
    history = torch.stack(tuple(trainer.history)) if trainer.history else torch.empty(0, model.field_size)
    queue = torch.stack(tuple(trainer.text_queue)) if trainer.text_queue else torch.empty(0, model.field_size)
    return {
        "nn1": model.networks.nn1.state_dict(),
        "nn2": model.networks.nn2.state_dict(),
        "nn3": model.networks.nn3.state_dict(),
        "field": model.field0.clone(),
        "q_table": model.q_table.to_dict(),
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": dict(config),
        "progress": dict(progress),
        "optimizers": [optimizer.state_dict() for optimizer in model.optimizers],
        "rng_state": model.generator.get_state(),
        "trainer": {
            "psi": trainer.psi.clone(),
            "history": history,
            "text_queue": queue,
            "k": trainer.k,
            "accelerator": trainer.accelerator,
            "streak": trainer.streak,
            "batches_done": trainer.batches_done,
            "base_learning_rate": trainer.base_learning_rate,
        },
    }


def save_checkpoint(
    path: str | os.PathLike[str],
    trainer: FieldTrainer,
    config: Mapping[str, Any] | None = None,
    progress: Mapping[str, Any] | None = None,
) -> str:
    """Write our checkpoint atomically; returns the SHA-256 of the bytes written."""
    payload = checkpoint_payload(trainer, config or {}, progress or {})
    return atomic_torch_save(payload, Path(path))


def atomic_torch_save(payload: Mapping[str, Any], path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(dict(payload), handle)
            handle.flush()
            os.fsync(handle.fileno())
        digest = file_sha256(tmp_name)
        os.replace(tmp_name, path)
        _fsync_dir(path.parent)
        return digest
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise CheckpointError(f"{path}: cannot write checkpoint: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Loading ----------------------------------------------------------------------------------


def read_payload(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`torch.load(weights_only=True)` with every failure turned into one clear line.

    `torch.load` does not check the zip archive's CRCs, so a flipped byte inside a tensor
    would load as different weights: the archive is verified first. A file that is neither a
    zip archive nor a legacy (pickle) torch file is refused without unpickling anything.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    _verify_container(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path}: holds Python objects other than tensors and plain containers; refusing to load it"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or not a torch file)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError, TypeError) as exc:
        reason = "truncated or corrupt" if _looks_truncated(exc) else "corrupt or not a torch file"
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a Quadra Matrix checkpoint (holds a {type(payload).__name__}, not a dict)")
    missing = [key for key in ORIGINAL_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: not a Quadra Matrix checkpoint (missing {', '.join(missing)})")
    return payload


_PICKLE_PROTOCOL_2_OR_LATER = b"\x80"


def _verify_container(path: Path) -> None:
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt archive)") from None
        except zipfile.LargeZipFile:
            return
        if bad is not None:
            raise CheckpointError(f"{path}: not a readable checkpoint (corrupt: checksum mismatch in {bad})")
    elif not head.startswith(_PICKLE_PROTOCOL_2_OR_LATER):
        raise CheckpointError(f"{path}: not a torch checkpoint file (it is neither a torch zip archive nor a legacy torch file)")


def _looks_truncated(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, EOFError) or any(
        word in text for word in ("central directory", "failed finding", "unexpected end", "truncated", "eof")
    )


def non_finite_tensors(path: str | os.PathLike[str]) -> list[str]:
    """Names of the checkpoint's floating-point tensors that hold NaN or inf, read from the file
    itself (`load_checkpoint` refuses such a file; this says what is wrong with it)."""
    payload = read_payload(path)
    found: list[str] = []

    def visit(name: str, value: object) -> None:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                found.append(name)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                visit(f"{name}.{key}" if name else str(key), item)

    for key in ("nn1", "nn2", "nn3", "field", "trainer"):
        visit(key, payload.get(key))
    return found


def load_checkpoint(path: str | os.PathLike[str]) -> LoadedCheckpoint:
    """Load either format into a model (and, for ours, a trainer ready to resume)."""
    path = Path(path)
    payload = read_payload(path)
    field0 = payload["field"]
    if not isinstance(field0, torch.Tensor) or field0.dim() != 1 or field0.numel() < 2:
        raise CheckpointError(f"{path}: 'field' must be a 1-D tensor of the field size, got {_describe(field0)}")
    if not bool(torch.isfinite(field0).all()):
        raise CheckpointError(f"{path}: 'field' holds non-finite values (NaN or inf)")
    field_size = field0.numel()
    config = payload.get("config") or {}
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{path}: 'config' must be a dict, got {_describe(config)}")
    config = dict(config)
    try:
        seed, learning_rate = int(config.get("seed", 0)), float(config.get("learning_rate", 0.001))
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: 'config' has a seed or learning_rate that is not a number") from None
    ours = payload.get("format") == FORMAT_NAME
    if ours and payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {payload.get('format_version')!r} is not supported "
            f"(this program reads version {FORMAT_VERSION})"
        )

    model = QuadraModel(field_size, seed=seed, learning_rate=learning_rate)
    _load_networks(path, model.networks, payload)
    model.field0 = field0.to(torch.float32).clone()
    model.q_table = _load_q_table(path, payload["q_table"])

    if not ours:
        return LoadedCheckpoint(path, "original", model, None, config, {})

    try:
        for optimizer, state in zip(model.optimizers, payload["optimizers"], strict=True):
            optimizer.load_state_dict(state)
            use_fused_kernel(optimizer)  # a checkpoint written before Adam was fused says fused: None
        trainer = _load_trainer(model, payload["trainer"])
        model.generator.set_state(payload["rng_state"])  # after the trainer: its constructor draws
    except _TrainerStateError as exc:
        raise CheckpointError(f"{path}: training state is damaged ({exc})") from None
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{path}: training state is damaged ({type(exc).__name__}: {str(exc)[:200]})") from None
    return LoadedCheckpoint(path, FORMAT_NAME, model, trainer, config, dict(payload.get("progress") or {}))


def _load_networks(path: Path, networks: NetworkTrio, payload: Mapping[str, Any]) -> None:
    for name, net in zip(("nn1", "nn2", "nn3"), networks.networks):
        state = payload[name]
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{path}: '{name}' must be a state dict, got {_describe(state)}")
        expected = net.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append("missing " + ", ".join(f"{name}.{k}" for k in missing))
            if unexpected:
                parts.append("unexpected " + ", ".join(f"{name}.{k}" for k in unexpected))
            raise CheckpointError(f"{path}: wrong network keys: {'; '.join(parts)}")
        for key, tensor in state.items():
            if not isinstance(tensor, torch.Tensor):
                raise CheckpointError(f"{path}: {name}.{key} is {_describe(tensor)}, not a tensor")
            if tensor.shape != expected[key].shape:
                raise CheckpointError(
                    f"{path}: {name}.{key} has shape {list(tensor.shape)}, expected {list(expected[key].shape)} "
                    f"for field size {networks.field_size}"
                )
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(f"{path}: {name}.{key} holds non-finite values (NaN or inf)")
            if key.startswith("lif") and not torch.equal(tensor.to(expected[key].dtype), expected[key]):
                raise CheckpointError(
                    f"{path}: {name}.{key} is {tensor.item()}, but this model's neurons use {expected[key].item()}"
                )
        net.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def _load_q_table(path: Path, table: object) -> QTable:
    if not isinstance(table, Mapping):
        raise CheckpointError(f"{path}: 'q_table' must be a dict, got {_describe(table)}")
    try:
        return QTable.from_dict(table)  # type: ignore[arg-type]
    except (AttributeError, TypeError, ValueError):
        raise CheckpointError(f"{path}: 'q_table' must map state keys to {{action: number}}") from None


def _load_trainer(model: QuadraModel, state: Mapping[str, Any]) -> FieldTrainer:
    trainer = FieldTrainer(model, base_learning_rate=float(state["base_learning_rate"]))
    n = model.field_size
    psi, history, queue = state["psi"], state["history"], state["text_queue"]
    if psi.shape != (n,) or history.shape[1:] != (n,) or queue.shape[1:] != (n,):
        raise _TrainerStateError(f"psi, history or text queue does not match the field size {n}")
    if not all(bool(torch.isfinite(t).all()) for t in (psi, history, queue)):
        raise _TrainerStateError("psi, history or text queue holds non-finite values")
    trainer.psi = psi.clone()
    trainer.history.extend(history.clone().unbind(0))
    trainer.text_queue.extend(queue.clone().unbind(0))
    trainer.k = int(state["k"])
    trainer.accelerator = float(state["accelerator"])
    trainer.streak = int(state["streak"])
    trainer.batches_done = int(state["batches_done"])
    return trainer


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return f"a {type(value).__name__}"
