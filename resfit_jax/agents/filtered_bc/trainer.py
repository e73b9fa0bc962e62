"""Filtered BC (online BC fine-tuning), the third baseline of the paper's comparison:
roll out the current base without noise, keep the successful episodes
(an episode ends at its first success, so each is cut there), fine-tune the base on a mix of
demos and kept successes, repeat. Every rollout counts against the env-step budget.

    trainer = make_filtered_bc(task, "runs/bc/PickPlace", demos, filtered_bc_preset("PickPlace"),
                               seeds=[0, 1, 2])
    summary = train_filtered_bc(trainer, out="runs/filtered_bc/PickPlace")

One round (jitted, vmapped over seeds): ``num_envs`` episodes from fresh starts with the
current parameters (an episode that ends early leaves its env idle until the round ends; a
round is charged num_envs x horizon env steps, and the steps the episodes ran are logged as
``env_steps_ran``); the (observation, action chunk) samples of the successful ones go into a
ring buffer; then ``steps_per_round`` AdamW steps (lr 5e-5, batch 1024, the base's L1 chunk
loss) on batches of ``demo_fraction`` demos and the rest kept successes (demos only while
none is kept). Evaluation, checkpoints, resume and summary.json are the simulated trainers'
(``sim.phases.run_phases``), paired against the frozen base on the same starts.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from resfit_jax.agents.checks import nonfinite_bits
from resfit_jax.agents.filtered_bc.config import FilteredBCConfig
from resfit_jax.base.policy import ChunkedBase
from resfit_jax.base.residual import ResidualPolicy
from resfit_jax.bc.data import chunk_dataset
from resfit_jax.bc.frozen import INFO_FILE, load_params
from resfit_jax.bc.networks import BCConfig
from resfit_jax.bc.train import make_trainer as make_bc_trainer
from resfit_jax.data.rlds import Episode, check_compatible
from resfit_jax.envs.core import Env
from resfit_jax.normalization import Normalizer
from resfit_jax.replay import ReplayBuffer, ReplayState
from resfit_jax.replay.demos import fit_normalizer
from resfit_jax.sim.evaluation import make_evaluator, record_episodes
from resfit_jax.sim.phases import RunOptions, final_eval_phase, iteration_phase, run_phases
from resfit_jax.sim.progress import Run

PyTree = Any
FINITE_FIELDS = ("rollout.obs", "bc_loss")  # the bits of the rounds' nonfinite_mask


@struct.dataclass
class FBCLearnerState:
    params: PyTree
    opt_state: PyTree
    normalizer: Normalizer  # the run's action range (evaluations clip to it)


@struct.dataclass
class FBCState:
    learner_state: FBCLearnerState
    buffer: ReplayState  # success samples: obs [C, O], chunk [C, K, A], mask [C, K]
    key: jax.Array


def success_samples(rollout: dict, chunk_size: int) -> tuple[dict, jax.Array]:
    """Training samples of every step [T, N] (as ``resfit_jax.bc.data.chunk_dataset``: the chunk of
    actions t..t+K-1, padded past the episode's end and masked there) and which are kept:
    steps of successful episodes only."""
    t_len, n = rollout["alive"].shape
    length = rollout["length"]
    idx = jnp.arange(t_len)[:, None] + jnp.arange(chunk_size)[None]  # [T, K]
    src = jnp.minimum(idx[:, :, None], jnp.maximum(length, 1)[None, None] - 1)  # [T, K, N]
    chunk = rollout["action"][src, jnp.arange(n)[None, None]]  # [T, K, N, A]
    items = {
        "obs": rollout["obs"],
        "chunk": jnp.moveaxis(chunk, 2, 1),
        "mask": jnp.moveaxis(idx[:, :, None] < length[None, None], 2, 1),
    }
    return items, rollout["alive"] & rollout["success"][None]


@dataclasses.dataclass
class FilteredBCTrainer:
    """Filtered BC's compiled rounds and evaluations (a ``sim.phases.PhasedTrainer``)."""

    task: Env
    cfg: FilteredBCConfig
    normalizer: Normalizer
    seeds: list[int]
    base: ChunkedBase  # the frozen base: the paired reference
    bc_config: BCConfig
    bc: Any  # resfit_jax.bc.train.BCTrainer (its loss and predict)
    init_params: PyTree
    demo_data: dict
    offline: Any = None
    method: str = "FilteredBC"
    first_phase: str = "train"
    finite_fields: tuple[str, ...] = FINITE_FIELDS
    starts_at_base: bool = True  # round 0's parameters are the base's

    def __post_init__(self):
        self.tx = optax.chain(
            optax.clip_by_global_norm(self.bc_config.grad_clip),
            optax.adamw(self.cfg.lr, weight_decay=self.bc_config.weight_decay),
        )
        self.buffer = ReplayBuffer(self.cfg.capacity)
        self.round = jax.jit(jax.vmap(self._round), donate_argnums=0)
        self.evaluator = make_evaluator(
            self.task,
            self.seeds,
            self.cfg.eval_episodes,
            self.cfg.num_final_episodes,
            self.base,
            policy_of=self.policy,
        )

    @property
    def env_steps_per_chunk(self) -> int:
        return self.cfg.num_envs * self.task.horizon

    @property
    def iterations(self) -> int:
        return max(1, self.cfg.total_env_steps // self.env_steps_per_chunk)

    def policy(self, lstate: FBCLearnerState) -> ResidualPolicy:
        """The fine-tuned base (the frozen one's chunking), clipped to the run's range."""
        b = self.base
        chunked = ChunkedBase(
            lambda obs: self.bc.predict(lstate.params, obs),
            b.action_dim,
            b.chunk_size,
            b.execution_horizon,
            b.temporal_ensemble,
        )
        return ResidualPolicy(chunked, lstate.normalizer)

    def init(self) -> FBCState:
        k, a = self.base.chunk_size, self.base.action_dim
        obs_dim = int(self.demo_data["obs"].shape[-1])
        spec = {
            "obs": jax.ShapeDtypeStruct((obs_dim,), jnp.float32),
            "chunk": jax.ShapeDtypeStruct((k, a), jnp.float32),
            "mask": jax.ShapeDtypeStruct((k,), bool),
        }

        def one(key):
            params = jax.tree.map(jnp.array, self.init_params)
            ls = FBCLearnerState(params, self.tx.init(params), self.normalizer)
            return FBCState(ls, self.buffer.init(spec), key)

        return jax.jit(jax.vmap(one))(self.evaluator.keys())

    def _finetune(self, ls: FBCLearnerState, buffer: ReplayState, key: jax.Array):
        cfg, demo = self.cfg, self.demo_data
        b = cfg.batch_size
        from_buffer = (jnp.arange(b) >= round(cfg.demo_fraction * b)) & (buffer.size > 0)

        def one(carry, k):
            params, opt = carry
            k_demo, k_buf, k_drop = jax.random.split(k, 3)
            d = jax.tree.map(lambda x: x[jax.random.randint(k_demo, (b,), 0, x.shape[0])], demo)
            s = self.buffer.sample(buffer, k_buf, (b,))
            pick = lambda x, y: jnp.where(from_buffer.reshape((b,) + (1,) * (x.ndim - 1)), y, x)
            batch = jax.tree.map(pick, d, s)
            loss, g = jax.value_and_grad(self.bc.loss)(
                params, batch["obs"], batch["chunk"], batch["mask"].astype(jnp.float32), k_drop
            )
            updates, opt = self.tx.update(g, opt, params)
            return (optax.apply_updates(params, updates), opt), loss

        (params, opt), losses = jax.lax.scan(
            one, (ls.params, ls.opt_state), jax.random.split(key, cfg.steps_per_round)
        )
        return ls.replace(params=params, opt_state=opt), losses

    def _round(self, st: FBCState) -> tuple[FBCState, dict]:
        key, k_roll, k_ft = jax.random.split(st.key, 3)
        out = record_episodes(
            self.task, self.policy(st.learner_state), jax.random.split(k_roll, self.cfg.num_envs)
        )
        items, keep = success_samples(out, self.base.chunk_size)
        buffer = self.buffer.add(st.buffer, items, keep)
        ls, losses = self._finetune(st.learner_state, buffer, k_ft)
        mask = nonfinite_bits(
            {"rollout.obs": jnp.where(keep[..., None], items["obs"], 0.0), "bc_loss": losses}
        )
        metrics = {
            "episodes": jnp.asarray(self.cfg.num_envs),
            "successes": out["success"].sum(),
            "env_steps_ran": out["length"].sum(),
            "kept_samples": keep.sum(),
            "buffer_size": buffer.size,
            "bc_loss": losses.mean(),
            "bc_loss_last": losses[-1],
            "nonfinite_mask": mask,
        }
        return FBCState(ls, buffer, key), metrics


def make_filtered_bc(
    task: Env,
    base_path: str,
    episodes: Sequence[Episode],
    cfg: FilteredBCConfig,
    seeds: Sequence[int],
) -> FilteredBCTrainer:
    """The trainer for a train_bc checkpoint (its params are what Filtered BC tunes; an
    export has none) on ``episodes`` (the demos of every fine-tuning batch)."""
    path = os.path.abspath(base_path)
    found = [
        c
        for c in (path, os.path.join(path, "checkpoint"))
        if os.path.exists(os.path.join(c, INFO_FILE))
    ]
    if not found:
        raise FileNotFoundError(
            f"Filtered BC fine-tunes the base's parameters, so it needs a "
            f"train_bc checkpoint ({INFO_FILE}) at {base_path} or its "
            "checkpoint/ folder; an exported base has none."
        )
    from resfit_jax.bc.data import ChunkNormalizer
    from resfit_jax.bc.frozen import load_base

    params, info = load_params(found[0])
    base, _ = load_base(found[0], int(task.observation_spec.shape[0]), task.action_size)
    bc_config = dataclasses.replace(
        BCConfig.from_dict(info["config"]), lr=cfg.lr, batch_size=cfg.batch_size
    )
    bc = make_bc_trainer(
        bc_config,
        info["obs_dim"],
        info["action_dim"],
        ChunkNormalizer.from_dict(info["normalizer"]),
    )
    episodes = list(episodes)[: cfg.num_demos] if cfg.num_demos else list(episodes)
    check_compatible(episodes, info["obs_dim"], info["action_dim"], type(task).__name__)
    demo = {k: jnp.asarray(v) for k, v in chunk_dataset(episodes, base.chunk_size).items()}
    normalizer = fit_normalizer(episodes, 0.0, cfg.action_margin, cfg.obs_min_std)
    return FilteredBCTrainer(task, cfg, normalizer, list(seeds), base, bc_config, bc, params, demo)


def _train_phase(run: Run) -> bool:
    """Rounds (rollouts, kept successes, fine-tuning), evaluated every eval_every env steps."""
    return iteration_phase(run, "Filtered BC", run.trainer.round)


FBC_PHASES = {"train": _train_phase, "final_eval": final_eval_phase}


def train_filtered_bc(trainer: FilteredBCTrainer, out: str, **options: Any) -> dict:
    """Run (or resume) Filtered BC with the simulated trainers' outputs, locking, resume rules
    and ``options`` (``sim.phases.RunOptions``)."""
    return run_phases(trainer, FBC_PHASES, out, RunOptions(**options))
