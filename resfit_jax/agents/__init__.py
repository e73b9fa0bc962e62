"""One folder per algorithm, brax style: ``networks`` (modules), ``losses`` (pure loss
functions whose first argument is the differentiated params) and ``learner`` (config, state
and the init / act / update functions the loops call through ``resfit_jax.learner.Learner``).

- ``residual_td3``: ResFiT, the residual off-policy learner on a frozen base.
"""
