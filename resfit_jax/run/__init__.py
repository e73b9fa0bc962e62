"""Run infrastructure, shared by every script: orbax checkpoints (``checkpointing``), run
locks (``locks``), metrics files (``logger``), config overrides and printing (``configs``),
field validation (``validation``), script set-up (``runtime``), learning curves
(``plotting``), paired statistics (``stats``) and the machine description (``machine``).
"""
