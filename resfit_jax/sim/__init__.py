"""Residual training in simulation: jitted phases (``loop``), the pure ``residual_env_step``
(``step``), the episode evaluator (``evaluation``), per-task presets (``presets``), the
driver with checkpoints and resume (``trainer``) and its tables (``report``).

The robot side (``resfit_jax.robot``) imports nothing from here.
"""
