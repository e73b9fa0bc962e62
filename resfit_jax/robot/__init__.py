"""Residual training on a robot: the thin host loop with safety limits and a rate clock
(``loop``), the robot learner in sync or async mode (``learner``), phases, journal and
restart (``trainer``, ``journal``), operator labels (``operator``), blind A/B evaluation
(``blind_ab``) and a simulated robot
server over an authenticated socket (``sim_server``).

It shares the learner, the update step (``resfit_jax.replay.updates``), the demo buffer and the
normalizer with the simulated side, and imports nothing from ``resfit_jax.sim``.
"""
