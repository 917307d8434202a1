"""Registered versions: registering (signed), aliases, downloads and signature checks.

A version's model directory is written here first (`mlflow.pytorch.save_model`: the policy
module pickled with its class, a signature and input example, pinned requirements, our package
as code, the checkpoint as `extra_files/checkpoint.pt`), signed (`signing.py`), then uploaded to
the logged model's artifacts with its signature, and registered with the artifact location as
its source: no MLflow fluent API, so nothing depends on the process-wide tracking URI.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..keys import Keyring, KeyPair
from .connection import MlflowConnection, _error_code
from .errors import RegistryError, UnknownModelVersionError
from .names import (
    CHALLENGER,
    CHECKPOINT_ARTIFACT,
    CHECKPOINT_FILENAME,
    METRIC_TAG_PREFIX,
    MODEL_ARTIFACT_NAME,
    SIGNATURE_ARTIFACT,
    TAG_CHECKPOINT,
    TAG_CODE_VERSION,
    TAG_FIELD_SIZE,
    TAG_SHA256,
    TAG_SIGNATURE_KEY,
    TAG_SIGNATURE_SHA256,
    TAG_SIGNED,
)
from .signing import SignatureError, file_sha256, sign_directory, verify_directory

if TYPE_CHECKING:
    from quadra_pipeline.model import QuadraModel

log = logging.getLogger(__name__)


@dataclass
class RegisteredVersion:
    version: int
    model_uri: str  # models:/quadra-matrix/<version>
    run_id: str
    checkpoint_sha256: str
    tags: dict[str, str]
    model_name: str = ""
    model_id: str = ""  # MLflow 3 logged model id (m-...)
    previous_challenger: int | None = None  # who held `challenger` before this version took it


@dataclass
class VersionInfo:
    version: int
    aliases: list[str]
    tags: dict[str, str]
    created_at: dt.datetime
    run_id: str | None
    description: str = ""
    status: str = ""
    source: str = ""
    model_name: str = ""

    @property
    def checkpoint_sha256(self) -> str | None:
        return self.tags.get(TAG_SHA256)

    @property
    def signed(self) -> bool:
        return bool(self.tags.get(TAG_SIGNATURE_SHA256))

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data


class _DropPickleNotice(logging.Filter):
    """mlflow.pytorch warns on every pickle save; pickle is our deliberate choice (see above)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Saving pytorch model by Pickle")


class VersionsMixin(MlflowConnection):
    model_name: str
    keys: KeyPair | None  # signs new versions (its private key)
    keyring: Keyring  # verifies: the signing key's public key and retired ones
    experiment_id: Any  # RunsMixin.experiment_id (ModelRegistry combines both)

    # Registering ---------------------------------------------------------------------------

    def register(
        self,
        run_id: str,
        model: QuadraModel,
        checkpoint_path: str | os.PathLike[str],
        *,
        tags: Mapping[str, Any],
        description: str = "",
        metrics: Mapping[str, float] | None = None,
        signed_as: str = "at registration",
        move_challenger: bool = True,
    ) -> RegisteredVersion:
        """Log `model` (as a `QuadraPolicyModule`, with the checkpoint), signed, to the run;
        register it as a new version of `model_name` and (unless not `move_challenger`: the
        service moves it under its lock) move `challenger` to it.

        Version tags: `checkpoint_sha256` (of the checkpoint's bytes), `field_size`,
        `code_version` (unless given), `checkpoint_artifact`, `signature_sha256`, `signature_key`,
        `signed`, `metric.<name>` for `metrics`, and the caller's `tags`. Any failure raises
        `RegistryError`; a version created before the failure is deleted again, so the registry
        never keeps a half-registered version.
        """
        source = Path(checkpoint_path)
        if not source.is_file():
            raise RegistryError(f"cannot register: checkpoint {source} does not exist or is not a file")
        keys = self.require_signing_key("register a version")
        self._ensure_available()
        experiment_id = self.experiment_id()
        model_id: str | None = None
        version: int | None = None
        with tempfile.TemporaryDirectory(prefix="quadra-register-") as tmp:
            checkpoint = Path(tmp) / CHECKPOINT_FILENAME
            try:
                shutil.copyfile(source, checkpoint)  # hash, sign and upload the same bytes
            except OSError as exc:
                raise RegistryError(f"cannot register: cannot read checkpoint {source}: {exc.strerror or exc}") from None
            sha256 = file_sha256(checkpoint)
            version_tags = self._version_tags(model, sha256, tags, metrics or {})
            try:
                with self._call(f"create a logged model in run {run_id}"):
                    logged = self.client.create_logged_model(
                        experiment_id,
                        name=MODEL_ARTIFACT_NAME,
                        source_run_id=run_id,
                        tags={"field_size": str(model.field_size)},
                        model_type="quadra-policy",
                    )
                model_id = logged.model_id
                model_dir = Path(tmp) / "model"
                self._save_model(model_dir, model, checkpoint, run_id, model_id)
                version_tags.update(self._sign(model_dir, keys, signed_as))
                with self._call(f"upload the model files of run {run_id}"):
                    self.client.log_model_artifacts(model_id, str(model_dir))
                    self.client.finalize_logged_model(model_id, "READY")
                self._ensure_registered_model()
                with self._call(f"create a version of registered model {self.model_name!r}"):
                    created = self.client.create_model_version(
                        self.model_name,
                        # The storage location itself: a `models:/m-...` source would be resolved
                        # through MLflow's process-wide tracking URI (its SQL registry store does).
                        source=logged.artifact_location,
                        run_id=run_id,
                        tags=version_tags,
                        description=description or None,
                        model_id=model_id,
                    )
                version = int(created.version)
                if str(created.status) not in ("READY", "ModelVersionStatus.READY", "2"):
                    self._await_ready(version)
                previous = self._set_alias(CHALLENGER, version) if move_challenger else None
            except BaseException as exc:
                self._undo_register(version, model_id)
                if isinstance(exc, RegistryError):
                    raise
                if isinstance(exc, SignatureError):
                    raise RegistryError(f"cannot register: {exc}") from None
                if isinstance(exc, Exception):
                    raise self._translate(exc, "register the model") from None
                raise
        return RegisteredVersion(
            version=version,
            model_uri=f"models:/{self.model_name}/{version}",
            run_id=run_id,
            checkpoint_sha256=sha256,
            tags=version_tags,
            model_name=self.model_name,
            model_id=model_id or "",
            previous_challenger=previous,
        )

    def require_signing_key(self, action: str) -> KeyPair:
        """The private key, required here (and only here: a process that never registers or
        signs a version holds none, production included)."""
        if self.keys is None or not self.keys.can_sign:
            raise RegistryError(
                f"cannot {action}: no model-signing key is configured (QUADRA_MODEL_SIGNING_KEY_FILE or "
                "QUADRA_MODEL_SIGNING_KEY; required when QUADRA_ENV=production wherever versions are registered or "
                "signed; quadra model keygen makes a pair)"
            )
        return self.keys

    def _sign(self, model_dir: Path, keys: KeyPair, signed_as: str) -> dict[str, str]:
        signature = sign_directory(model_dir, keys)
        return {TAG_SIGNATURE_SHA256: file_sha256(signature), TAG_SIGNATURE_KEY: keys.key_id, TAG_SIGNED: signed_as}

    def _version_tags(
        self, model: QuadraModel, sha256: str, tags: Mapping[str, Any], metrics: Mapping[str, float]
    ) -> dict[str, str]:
        from .client import code_version

        result = {TAG_CODE_VERSION: code_version()}
        result.update({METRIC_TAG_PREFIX + str(k): repr(float(v)) for k, v in metrics.items()})
        result.update({str(k): str(v) for k, v in tags.items() if v is not None})
        # Facts about these bytes win over whatever the caller passed.
        result[TAG_SHA256] = sha256
        result[TAG_FIELD_SIZE] = str(model.field_size)
        result[TAG_CHECKPOINT] = CHECKPOINT_ARTIFACT
        return result

    def _save_model(self, model_dir: Path, model: QuadraModel, checkpoint: Path, run_id: str, model_id: str) -> None:
        """The MLflow model directory: `mlflow.pytorch` flavour (pickle: keeps
        `QuadraPolicyModule`; "pt2" would load back as a GraphModule), pyfunc, a signature and an
        input example, explicit requirements (no inference, which re-imports the model in a
        subprocess), our package as code (so it loads where quadra-pipeline is not installed),
        and the checkpoint as `extra_files/checkpoint.pt`."""
        import cloudpickle
        import mlflow
        import mlflow.pytorch
        import numpy as np
        import torch
        from mlflow.models import Model, infer_signature

        from quadra_pipeline.model.serving import QuadraPolicyModule

        module = QuadraPolicyModule.from_model(model)
        example = model.field0.detach().to(torch.float32).reshape(1, -1).numpy().copy()
        signature = infer_signature(example, module(torch.from_numpy(example)).numpy())
        requirements = [
            f"mlflow=={mlflow.__version__}",
            f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={np.__version__}",
            f"cloudpickle=={cloudpickle.__version__}",
        ]
        notice = _DropPickleNotice()
        pytorch_log = logging.getLogger("mlflow.pytorch")
        pytorch_log.addFilter(notice)
        try:
            mlflow.pytorch.save_model(
                module,
                str(model_dir),
                mlflow_model=Model(artifact_path=MODEL_ARTIFACT_NAME, run_id=run_id, model_id=model_id),
                serialization_format="pickle",
                signature=signature,
                input_example=example,
                extra_files=[str(checkpoint)],
                pip_requirements=requirements,
                code_paths=[str(Path(__file__).resolve().parents[1])],
            )
        except Exception as exc:  # noqa: BLE001 - MLflow, pickling, disk
            raise RegistryError(f"cannot save the model files: {exc}") from None
        finally:
            pytorch_log.removeFilter(notice)

    def _ensure_registered_model(self) -> None:
        with self._call(f"get or create registered model {self.model_name!r}"):
            try:
                self.client.get_registered_model(self.model_name)
                return
            except Exception as exc:
                if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                    raise
            try:
                self.client.create_registered_model(
                    self.model_name,
                    description="The Quadra Matrix policy model (quadra-pipeline).",
                )
            except Exception as exc:
                if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                    raise

    def _await_ready(self, version: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self._call(f"read version {version}"):
                status = str(self.client.get_model_version(self.model_name, str(version)).status)
            if status.endswith("READY"):
                return
            if status.endswith("FAILED_REGISTRATION") or time.monotonic() > deadline:
                raise RegistryError(f"{self.model_name} version {version} did not become READY (status {status})")
            time.sleep(0.2)

    def _undo_register(self, version: int | None, model_id: str | None) -> None:
        if version is not None:
            if self._quietly(lambda: self.client.delete_model_version(self.model_name, str(version))):
                log.warning("deleted %s version %s again: registration failed", self.model_name, version)
            else:
                log.error("%s version %s is half-registered and could not be deleted", self.model_name, version)
        if model_id is not None:
            self._quietly(lambda: self.client.finalize_logged_model(model_id, "FAILED"))

    def discard(self, registered: RegisteredVersion) -> None:
        """Undo `register`: delete the version and give `challenger` back to its previous holder
        (used when the step after registering, e.g. the SQL mirror, fails)."""
        self._ensure_available()
        with self._call(f"delete {self.model_name} version {registered.version}"):
            self.client.delete_model_version(self.model_name, str(registered.version))
        previous = registered.previous_challenger
        if previous is not None and previous != registered.version:
            with contextlib.suppress(UnknownModelVersionError):
                self._set_alias(CHALLENGER, previous)

    # Versions and aliases ------------------------------------------------------------------

    def get_version(self, version: int) -> VersionInfo:
        """One version; `UnknownModelVersionError` (naming the known versions) if there is none."""
        number = version_number(version)
        self._ensure_available()
        with self._call(f"read {self.model_name} version {number}"):
            try:
                found = self.client.get_model_version(self.model_name, str(number))
            except Exception as exc:
                if _error_code(exc) not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                    raise
                found = None
        if found is None:
            raise UnknownModelVersionError(
                f"{self.model_name} version {number} does not exist in the MLflow registry at "
                f"{self.display_uri} ({self._known_versions_text()})"
            )
        return _version_info(found, self.model_name)

    def _known_versions_text(self) -> str:
        try:
            numbers = [v.version for v in self.list_versions()]
        except RegistryError:
            return "the known versions could not be listed"
        if not numbers:
            return "no versions are registered"
        return "known versions: " + ", ".join(map(str, numbers))

    def list_versions(self) -> list[VersionInfo]:
        """Every version of the registered model, oldest first, with its current aliases."""
        self._ensure_available()
        aliases = self.aliases()
        by_version: dict[int, list[str]] = {}
        for alias, number in sorted(aliases.items()):
            by_version.setdefault(number, []).append(alias)
        escaped = self.model_name.replace("'", "\\'")
        found = []
        with self._call(f"list the versions of {self.model_name!r}"):
            token = None
            while True:
                page = self.client.search_model_versions(f"name = '{escaped}'", page_token=token)
                found.extend(page)
                token = getattr(page, "token", None)
                if not token:
                    break
        infos = [_version_info(v, self.model_name) for v in found]
        for info in infos:
            info.aliases = by_version.get(info.version, [])
        return sorted(infos, key=lambda i: i.version)

    def aliases(self) -> dict[str, int]:
        """`{alias: version}` of the registered model (empty if it is not registered yet)."""
        self._ensure_available()
        with self._call(f"read the aliases of {self.model_name!r}"):
            try:
                registered = self.client.get_registered_model(self.model_name)
            except Exception as exc:
                if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
                    return {}
                raise
        raw = registered.aliases or {}
        if isinstance(raw, Mapping):
            return {str(k): int(v) for k, v in raw.items()}
        return {str(a.alias): int(a.version) for a in raw}

    def alias_version(self, alias: str) -> int | None:
        return self.aliases().get(alias)

    def set_alias(self, alias: str, version: int) -> int | None:
        """Point `alias` at `version` (which must exist); return the version that held it."""
        number = version_number(version)
        self.get_version(number)  # UnknownModelVersionError before any change
        return self._set_alias(alias, number)

    def _set_alias(self, alias: str, version: int) -> int | None:
        previous = self.alias_version(alias)
        with self._call(f"set alias {alias!r} to {self.model_name} version {version}"):
            self.client.set_registered_model_alias(self.model_name, alias, str(version))
        return previous

    def delete_alias(self, alias: str) -> int | None:
        """Remove `alias`; return the version that held it (None: nobody did, nothing changed)."""
        previous = self.alias_version(alias)
        if previous is None:
            return None
        with self._call(f"delete alias {alias!r} of {self.model_name}"):
            self.client.delete_registered_model_alias(self.model_name, alias)
        return previous

    def version_tags(self, version: int) -> dict[str, str]:
        return dict(self.get_version(version).tags)

    def set_version_tags(self, version: int, tags: Mapping[str, str]) -> None:
        number = version_number(version)
        with self._call(f"tag {self.model_name} version {number}"):
            for key, value in tags.items():
                self.client.set_model_version_tag(self.model_name, str(number), key, str(value))

    # Files ------------------------------------------------------------------------------

    def _storage_location(self, info: VersionInfo) -> str:
        with self._call(f"find the files of {self.model_name} version {info.version}"):
            return self.client.get_model_version_download_uri(self.model_name, str(info.version))

    def _download(self, info: VersionInfo, artifact: str | None, dst: Path) -> Path:
        """One artifact of the version's model directory (None: the whole directory) into `dst`."""
        location = self._storage_location(info)
        what = artifact or "the model files"
        dst.mkdir(parents=True, exist_ok=True)
        with self._call(f"download {what} of {self.model_name} version {info.version}"):
            repository = self.artifact_repository(location)
            if artifact is None:
                return Path(repository.download_artifacts("", dst_path=str(dst)))
            return Path(repository.download_artifacts(artifact, dst_path=str(dst)))

    def download_checkpoint(self, version: int, dst: str | os.PathLike[str], *, verify: bool = True) -> Path:
        """Download the checkpoint of `version` to `dst` (a file path, or an existing folder to
        put `checkpoint.pt` in). With `verify`, its SHA-256 must equal the version's tag."""
        info = self.get_version(version)
        target = Path(dst)
        if target.is_dir():
            target = target / CHECKPOINT_FILENAME
        target.parent.mkdir(parents=True, exist_ok=True)
        artifact = info.tags.get(TAG_CHECKPOINT, CHECKPOINT_ARTIFACT)
        with tempfile.TemporaryDirectory(prefix="quadra-download-", dir=target.parent) as tmp:
            local_path = self._download(info, artifact, Path(tmp))
            if verify and info.checkpoint_sha256:
                actual = file_sha256(local_path)
                if actual != info.checkpoint_sha256:
                    raise RegistryError(
                        f"the checkpoint of {self.model_name} version {info.version} has SHA-256 {actual}, "
                        f"but the version is tagged {info.checkpoint_sha256}"
                    )
            os.replace(local_path, target)
        return target

    def load_model(self, version: int) -> QuadraModel:
        """The model of `version`, rebuilt from its checkpoint (checked against its SHA-256)."""
        from quadra_pipeline.model import load_checkpoint

        with tempfile.TemporaryDirectory(prefix="quadra-load-") as tmp:
            path = self.download_checkpoint(version, Path(tmp) / CHECKPOINT_FILENAME)
            return load_checkpoint(path).model

    # Signatures ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def model_files(self, version: int) -> Iterator[tuple[VersionInfo, Path]]:
        """The version and its model directory, downloaded into a temporary folder."""
        info = self.get_version(version)
        with tempfile.TemporaryDirectory(prefix="quadra-verify-") as tmp:
            yield info, self._download(info, None, Path(tmp) / "model")

    def verify_version(self, version: int) -> VersionInfo:
        """Check the version's files against its signature with the public key of the keyring its
        `signature_key` tag names; `SignatureError` (one line naming the version and the file,
        or the key id) if they differ, it is unsigned, or its key is not in the keyring.
        Returns the version."""
        if not len(self.keyring):
            raise SignatureError(
                "cannot verify a signature: no model verification key is configured (QUADRA_MODEL_VERIFY_KEY_FILE, "
                "QUADRA_MODEL_VERIFY_KEYS_FILE, QUADRA_MODEL_SIGNING_KEY_FILE or their variable forms)"
            )
        with self.model_files(version) as (info, model_dir):
            label = f"{self.model_name} version {info.version}"
            if not info.signed:
                raise SignatureError(f"{label} is not signed (registered before signing existed? quadra model sign {info.version})")
            verify_model_directory(model_dir, info, self.keyring, label)
        return info

    def sign_version(self, version: int, *, signed_as: str) -> VersionInfo:
        """Sign an unsigned version's files as they are now (checked first against its tagged
        checkpoint SHA-256) and store the signature with it; `signed_as` goes in its tags."""
        keys = self.require_signing_key("sign a version")
        with self.model_files(version) as (info, model_dir):
            label = f"{self.model_name} version {info.version}"
            if info.signed:
                raise RegistryError(f"{label} is already signed ({TAG_SIGNED}: {info.tags.get(TAG_SIGNED, '?')})")
            artifact = info.tags.get(TAG_CHECKPOINT, CHECKPOINT_ARTIFACT)
            checkpoint = model_dir / artifact
            if not checkpoint.is_file() or file_sha256(checkpoint) != info.checkpoint_sha256:
                raise RegistryError(f"{label}: its checkpoint does not match its tagged SHA-256; refusing to sign it")
            tags = self._sign(model_dir, keys, signed_as)
            location = self._storage_location(info)
            with self._call(f"upload the signature of {label}"):
                self.artifact_repository(location).log_artifact(
                    str(model_dir / SIGNATURE_ARTIFACT), SIGNATURE_ARTIFACT.rsplit("/", 1)[0]
                )
        self.set_version_tags(info.version, tags)
        return self.get_version(info.version)

    def version_url(self, version: int, ui_base: str) -> str:
        return f"{ui_base.rstrip('/')}/#/models/{self.model_name}/versions/{version_number(version)}"


def verify_model_directory(model_dir: Path, info: VersionInfo, keys: KeyPair | Keyring, label: str) -> None:
    """A downloaded or restored model directory against the version's signature and tags, with
    the key of `keys` (a keyring: the current key and retired ones) that its `signature_key`
    tag names. A version tagged with a key the keyring lacks fails, naming the key id; one
    signed before versions named their key is tried with each key."""
    keyring = keys if isinstance(keys, Keyring) else Keyring("ec-p256", [keys])
    signature = model_dir / SIGNATURE_ARTIFACT
    if signature.is_file() and file_sha256(signature) != info.tags.get(TAG_SIGNATURE_SHA256):
        raise SignatureError(f"{label}: {SIGNATURE_ARTIFACT} is not the signature its tags name (replaced?)")
    key_id = info.tags.get(TAG_SIGNATURE_KEY)
    if key_id:
        key = keyring.get(key_id)
        if key is None:
            known = ", ".join(f"{k[:12]}..." for k in keyring.key_ids) or "no keys"
            raise SignatureError(f"{label} was signed with another key ({key_id}), which is not in the model keyring ({known})")
        verify_directory(model_dir, key, label)
        return
    problems: list[SignatureError] = []
    for key in keyring:
        try:
            verify_directory(model_dir, key, label)
            return
        except SignatureError as exc:
            problems.append(exc)
    # The most telling failure: a file that differs says more than "another key" for each key.
    raise next((p for p in problems if "another key" not in str(p)), problems[0] if problems else
               SignatureError(f"{label}: no model verification key is configured"))


def version_number(version: Any) -> int:
    if isinstance(version, bool):
        raise RegistryError(f"a model version is a positive integer, not {version!r}")
    text = str(version).strip()
    if text.lower().startswith("v"):
        text = text[1:]
    try:
        number = int(text)
    except ValueError:
        raise RegistryError(f"a model version is a positive integer, not {version!r}") from None
    if number < 1:
        raise RegistryError(f"a model version is a positive integer, not {version!r}")
    return number


def _version_info(found: Any, model_name: str) -> VersionInfo:
    created_ms = getattr(found, "creation_timestamp", None) or 0
    aliases = list(getattr(found, "aliases", None) or [])
    return VersionInfo(
        version=int(found.version),
        aliases=[str(a) for a in aliases],
        tags={str(k): str(v) for k, v in (found.tags or {}).items()},
        created_at=dt.datetime.fromtimestamp(int(created_ms) / 1000, tz=dt.timezone.utc),
        run_id=found.run_id or None,
        description=found.description or "",
        status=str(found.status or "").removeprefix("ModelVersionStatus."),
        source=str(found.source or ""),
        model_name=model_name,
    )
