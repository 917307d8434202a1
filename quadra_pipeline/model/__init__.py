"""The Quadra Matrix model in plain PyTorch (no Dagster here): see docs in each module."""

from .checkpoint import CheckpointError, LoadedCheckpoint, file_sha256, load_checkpoint, save_checkpoint
from .features import text_features
from .probe import ProbeResult, probe
from .qlearning import ACTIONS, QTable, state_key
from .quadra import QuadraModel, TrainResult, item_loss
from .trainer import BatchMetrics, FieldTrainer

__all__ = [
    "ACTIONS",
    "BatchMetrics",
    "CheckpointError",
    "FieldTrainer",
    "LoadedCheckpoint",
    "ProbeResult",
    "QTable",
    "QuadraModel",
    "TrainResult",
    "file_sha256",
    "item_loss",
    "load_checkpoint",
    "probe",
    "save_checkpoint",
    "state_key",
    "text_features",
]
