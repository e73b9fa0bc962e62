"""``LearnerState``: everything the residual TD3 learner owns, as one pytree."""

from __future__ import annotations

from typing import Any

import jax
from flax import struct

from resfit_jax.normalization import Normalizer

PyTree = Any


@struct.dataclass
class LearnerState:
    """Everything the learner owns. rng is a typed PRNG key (checkpoints store its data);
    normalizer holds the observation and action statistics the params are trained under."""

    actor_params: PyTree
    critic_params: PyTree
    target_actor_params: PyTree
    target_critic_params: PyTree
    actor_opt_state: PyTree
    critic_opt_state: PyTree
    normalizer: Normalizer
    rng: jax.Array
    critic_steps: jax.Array
    actor_steps: jax.Array
    # camera encoders (pixel observations only; {} otherwise) and their optimizer state
    encoder_params: PyTree = struct.field(default_factory=dict)
    encoder_opt_state: PyTree = struct.field(default_factory=dict)
