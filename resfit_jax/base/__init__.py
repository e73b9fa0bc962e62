"""The frozen base at run time: the ``BasePolicy`` protocol and its adapters (``policy``: chunk
queue, Flax / exported / host-callback bases), the learner's base features (``features``:
chunk phase, planned actions, offsets) and base + residual as one policy (``residual``).

Loading a base never needs the BC training code (``resfit_jax.bc``).
"""
