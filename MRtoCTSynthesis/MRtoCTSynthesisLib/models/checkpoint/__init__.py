"""Self-describing, pickle-free checkpoints (the file format is documented in :mod:`.format`).

* :mod:`.format`: the safetensors layout, the metadata document, checksums, atomic saving and verified loading;
* :mod:`.weights`: building a checkpoint's networks from their stored configs and loading their weights;
* :mod:`.describe`: the summary ``mrtoct info`` prints.
"""

from .describe import describe_checkpoint
from .format import (
                     EMA_PREFIX,
                     FORMAT,
                     FORMAT_VERSION,
                     METADATA_KEY,
                     STATE_PREFIX,
                     Checkpoint,
                     load_checkpoint,
                     read_metadata,
                     save_checkpoint,
)
from .weights import load_network

__all__ = ["FORMAT", "FORMAT_VERSION", "METADATA_KEY", "EMA_PREFIX", "STATE_PREFIX", "Checkpoint", "save_checkpoint",
           "load_checkpoint", "read_metadata", "load_network", "describe_checkpoint"]
