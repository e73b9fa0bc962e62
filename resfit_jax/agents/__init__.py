"""One folder per algorithm, brax style: ``networks`` (modules), ``losses`` (pure loss
functions whose first argument is the differentiated params) and ``learner`` (config, state
and the init / act / update functions the loops call through ``resfit_jax.learner.Learner``).

- ``residual_td3``: ResFiT, the residual off-policy learner on a frozen base.
- ``residual_ppo``: the on-policy residual baseline (ResiP recipe).
- ``ibrl``: IBRL, the base and an RL actor propose and the critic picks (on residual TD3).
- ``rlpd``: Tuned RLPD, residual TD3 with no base (``NoBase``).
Filtered BC tunes the base itself and lives with the bases (``resfit_jax.agents.filtered_bc``).
"""
