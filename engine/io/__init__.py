"""Checkpoint input/output for the engine: safetensors files and sharded checkpoints, read zero-copy."""
from .safetensors import (ALIASES_KEY, SafetensorsError, SafetensorsFile, SafetensorsWriter, ShardedCheckpoint,
                          aliases, load_file, load_index, open_checkpoint, restore_aliases, safe_open, save_file,
                          save_sharded)

__all__ = ["ALIASES_KEY", "SafetensorsError", "SafetensorsFile", "SafetensorsWriter", "ShardedCheckpoint",
           "aliases", "load_file", "load_index", "open_checkpoint", "restore_aliases", "safe_open", "save_file",
           "save_sharded"]
