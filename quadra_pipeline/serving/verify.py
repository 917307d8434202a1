"""A version's files checked before anything serves them, and loaded as MLflow's pyfunc.

`check_model_directory` is what "verified" means here, in this order:
1. the files against the version's signature (OpenSSF model-signing) with the key of the
   model keyring that its `signature_key` tag names (`registry.versions.verify_model_directory`,
   as `quadra model verify` and promotion check it); an unsigned version is refused;
2. the checkpoint's bytes against the version's `checkpoint_sha256` tag;
3. the MLmodel's signature: one float32 tensor of shape (-1, N) in, (-1, 3) out, N equal to the
   version's `field_size` tag.
`load_verified` then loads the directory with `mlflow.pyfunc.load_model` (as MLflow's scoring
server does) and answers the model's own input example: a version that does not load or gives
no finite (1, 3) answer is refused too. Any refusal is a `VersionRefused`, one line naming the
version and the reason; none of this runs per request.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..keys import Keyring
from ..registry.names import (
    CHECKPOINT_ARTIFACT,
    TAG_CHECKPOINT,
    TAG_FIELD_SIZE,
    TAG_SHA256,
)
from ..registry.signing import SignatureError, file_sha256
from ..registry.versions import VersionInfo, verify_model_directory

ACTION_COUNT = 3


class VersionRefused(Exception):
    """This version must not be served; the message is one line naming it and why."""


def version_info(version: int, tags: dict[str, str], model: str) -> VersionInfo:
    return VersionInfo(version=int(version), aliases=[], tags=dict(tags), created_at=dt.datetime.now(dt.timezone.utc),
                       run_id=None, model_name=model)


def signature_field_size(model_dir: Path, label: str) -> int:
    """N of the MLmodel's signature: one float32 tensor (-1, N) in, (-1, 3) out."""
    from mlflow.models import Model
    from mlflow.types.schema import TensorSpec

    try:
        metadata = Model.load(str(model_dir / "MLmodel"))
    except Exception as exc:  # noqa: BLE001 - a missing or unreadable MLmodel
        raise VersionRefused(f"{label}: its MLmodel cannot be read ({' '.join(str(exc).split())[:160]})") from None
    inputs, outputs = metadata.get_input_schema(), metadata.get_output_schema()
    if inputs is None or outputs is None:
        raise VersionRefused(f"{label}: its MLmodel has no signature (inputs and outputs)")
    specs_in, specs_out = inputs.inputs, outputs.inputs
    ok = (len(specs_in) == 1 and isinstance(specs_in[0], TensorSpec) and specs_in[0].type == np.dtype("float32")
          and len(specs_in[0].shape) == 2 and specs_in[0].shape[0] == -1 and specs_in[0].shape[1] >= 1
          and len(specs_out) == 1 and isinstance(specs_out[0], TensorSpec)
          and tuple(specs_out[0].shape) == (-1, ACTION_COUNT))
    if not ok:
        raise VersionRefused(f"{label}: its signature is not one float32 tensor (-1, N) in and (-1, {ACTION_COUNT}) "
                             f"out ({inputs!r} -> {outputs!r})")
    return int(specs_in[0].shape[1])


def check_model_directory(model_dir: Path, info: VersionInfo, keyring: Keyring, label: str) -> int:
    """Steps 1-3 of the module's docstring; returns N, the field size."""
    if not info.signed:
        raise VersionRefused(f"{label} is not signed: it is never served (quadra model sign {info.version})")
    try:
        verify_model_directory(model_dir, info, keyring, label)
    except SignatureError as exc:
        raise VersionRefused(str(exc)) from None
    expected = info.tags.get(TAG_SHA256)
    if not expected:
        raise VersionRefused(f"{label} has no {TAG_SHA256} tag")
    checkpoint = model_dir / info.tags.get(TAG_CHECKPOINT, CHECKPOINT_ARTIFACT)
    if not checkpoint.is_file():
        raise VersionRefused(f"{label}: its checkpoint {checkpoint.relative_to(model_dir)} is missing")
    actual = file_sha256(checkpoint)
    if actual != expected:
        raise VersionRefused(f"{label}: its checkpoint has SHA-256 {actual}, but the version is tagged {expected}")
    field_size = signature_field_size(model_dir, label)
    tagged = info.tags.get(TAG_FIELD_SIZE)
    if tagged is not None and tagged != str(field_size):
        raise VersionRefused(f"{label}: its signature takes {field_size} numbers per row, but it is tagged "
                             f"{TAG_FIELD_SIZE}={tagged}")
    return field_size


@dataclass(frozen=True)
class LoadedModel:
    """A verified version, loaded: what one request uses from start to end."""

    model: str
    alias: str
    version: int
    field_size: int
    pyfunc: Any = field(repr=False)
    module: Any = field(repr=False)  # the torch module behind the pyfunc (None: call the pyfunc)
    action: str | None  # the policy's pick for an item arriving at its start state
    action_index: int | None
    record: dict[str, Any] = field(repr=False)  # what the follower published (tags, the alias move)
    loaded_at: float = field(default_factory=time.time)

    def predict(self, vectors: np.ndarray) -> np.ndarray:
        """(B, N) float32 -> (B, 3) float32: exactly what `pyfunc.predict` returns for the same
        array (the same module call; the pyfunc's schema check is done by the request parser)."""
        if self.module is not None:
            import torch

            with torch.no_grad():
                return self.module(torch.from_numpy(vectors)).numpy()
        return np.asarray(self.pyfunc.predict(vectors), dtype=np.float32)


def _load_pyfunc(model_dir: Path) -> Any:
    """`mlflow.pyfunc.load_model` of a local directory, leaving `sys.path` as it was: MLflow
    puts the model's `code/` folder in front of it for good; the classes the model names come
    from this installation (imported first), not from the copy inside the version."""
    import mlflow.pyfunc

    import quadra_pipeline.model.serving  # noqa: F401 - the pickled module's class

    saved = list(sys.path)
    try:
        return mlflow.pyfunc.load_model(str(model_dir))
    finally:
        sys.path[:] = saved


def load_verified(model_dir: Path, info: VersionInfo, keyring: Keyring, *, model: str, alias: str,
                  record: dict[str, Any] | None = None, checked_field_size: int | None = None) -> LoadedModel:
    """Check the directory (`check_model_directory`; `checked_field_size`: the caller just did,
    on these very files), load it, and have it answer its own input example; `VersionRefused`
    otherwise."""
    label = f"{model} version {info.version}"
    field_size = checked_field_size or check_model_directory(model_dir, info, keyring, label)
    try:
        pyfunc = _load_pyfunc(model_dir)
    except Exception as exc:  # noqa: BLE001 - unpickling, missing flavour, torch
        raise VersionRefused(f"{label} verified but does not load: {' '.join(str(exc).split())[:200]}") from None
    module = None
    try:
        raw = pyfunc.get_raw_model()
        import torch

        if isinstance(raw, torch.nn.Module):
            module = raw.eval()
    except Exception:  # noqa: BLE001 - a flavour without a raw model: call the pyfunc
        module = None
    action, action_index = None, None
    greedy = getattr(module, "greedy_action", None)
    if callable(greedy):
        from quadra_pipeline.model.qlearning import ACTIONS

        action = str(greedy())
        action_index = ACTIONS.index(action) if action in ACTIONS else None
    loaded = LoadedModel(model=model, alias=alias, version=info.version, field_size=field_size, pyfunc=pyfunc,
                         module=module, action=action, action_index=action_index, record=dict(record or {}))
    example = _input_example(model_dir, field_size)
    try:
        answer = loaded.predict(example)
        expected = np.asarray(pyfunc.predict(example))
    except Exception as exc:  # noqa: BLE001
        raise VersionRefused(f"{label} loads but cannot answer its input example: {' '.join(str(exc).split())[:200]}") from None
    if answer.shape != (len(example), ACTION_COUNT) or not np.isfinite(answer).all() or not np.array_equal(answer, expected):
        raise VersionRefused(f"{label} loads but answers its input example with {answer.shape} values that are not "
                             f"finite or differ from its pyfunc's")
    return loaded


def _input_example(model_dir: Path, field_size: int) -> np.ndarray:
    """The version's own input example (rows of N numbers), or a row of zeros without one."""
    try:
        data = json.loads((model_dir / "input_example.json").read_text())
        example = np.asarray(data, dtype=np.float32).reshape(-1, field_size)
        if len(example):
            return example
    except (OSError, ValueError, TypeError):
        pass
    return np.zeros((1, field_size), dtype=np.float32)
