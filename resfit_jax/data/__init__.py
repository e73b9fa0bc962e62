"""Data on disk: RLDS episodes (tfds array_record, no TensorFlow) and demo generation."""

from resfit_jax.data.rlds import (
    Episode,
    check_compatible,
    read_episodes,
    read_metadata,
    write_episodes,
)

__all__ = ["Episode", "check_compatible", "read_episodes", "read_metadata", "write_episodes"]
