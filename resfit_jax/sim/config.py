"""Residual training's configuration in simulation, split by concern; each part validates
itself and ``TrainConfig`` checks how they combine.

    TrainConfig
      learner: ResidualTD3Config   the learner's hyperparameters (agents/residual_td3)
      replay: ReplayConfig         n-step returns, UTD, batch, demo fraction, capacity
      base: BaseExecution          how the frozen chunked base runs
      residual: ResidualOptions    what the residual sees and how it acts beyond the paper's
                                   ResFiT (all off: the paper's)
      select: Selection            which state the held-out evaluation scores
      + the schedule: envs, phases, chunks, evaluation, demos, action range, device layout

UTD with E parallel envs: one vector step adds E env steps and runs ``updates_per_step``
learner updates of ``replay.utd`` critic steps (plus one actor step) each, so

    critic steps per env step = updates_per_step * replay.utd / num_envs.

Override any field from a script with ``--config.residual.hold=true`` (``run.configs``).
"""

from __future__ import annotations

import dataclasses

from resfit_jax.agents.ibrl import IBRLConfig
from resfit_jax.agents.residual_td3 import ResidualTD3Config
from resfit_jax.replay import ReplayConfig
from resfit_jax.replay.decision_demos import DEMO_RELABELS
from resfit_jax.run.validation import number_errors
from resfit_jax.sim.selection import SELECT_RULES

METHODS = ("resfit", "rlpd", "ibrl")
WINDOWS = ("offset", "offset_slope")  # ResidualOptions.window
METHOD_NAMES = {"resfit": "ResFiT", "rlpd": "RLPD", "ibrl": "IBRL"}


@dataclasses.dataclass(frozen=True)
class BaseExecution:
    """How the frozen chunked base runs (both None: as it was trained).

    execution_horizon: execute this many actions of each predicted chunk, then predict again
    (re-anchors the open-loop chunk more often). temporal_ensemble: predict every step and
    average the overlapping chunks with ACT's weights exp(-m * i), m = this value."""

    execution_horizon: int | None = None
    temporal_ensemble: float | None = None

    def __post_init__(self):
        errors = number_errors(self)
        if self.execution_horizon is not None and self.execution_horizon < 1:
            errors.append(f"execution_horizon must be >= 1 or None (got {self.execution_horizon})")
        if errors:
            raise ValueError("BaseExecution: " + "; ".join(errors) + ".")


@dataclasses.dataclass(frozen=True)
class ResidualOptions:
    """What the residual sees beyond the observation and how it acts; all off is the paper's
    ResFiT (a fresh correction every step from the observation alone).

    Inputs: ``base_phase`` appends the base's position in its open-loop chunk, ``base_plan``
    its next m planned actions (normalized; ``base.features``), ``time_feature`` t / horizon
    (then the time limit is part of the state and truncation is terminal).
    Acting: ``hold`` decides once per base chunk, on its first step, and holds that
    correction (and its noise) for the rest of the chunk (``base.features.Offsets``; the
    learner's observation gains the held offset and a 0/1 "decides here" flag);
    ``offset_bound`` > 0 instead sums every step's residual into a persistent offset within
    +-offset_bound, reset at each refill; ``progressive_steps`` T turns the residual on in each
    step with probability min(t / T, 1) (Policy Decorator); ``exploration_std_range`` draws
    each env's exploration std from U(lo, hi) at every episode start (FastTD3).

    Semi-MDP (``decision_steps`` k > 1; k divides the base's execution horizon): the
    residual decides every k env steps, aligned with the base's chunk refills, from the
    observation and the base's plan for the next k steps (``base_plan`` is raised to k - 1;
    the chunk phase is added when k is shorter than the chunk), holds its correction (and
    its exploration noise) for the k steps, and the replay stores one transition per
    decision (``replay.decisions``): return over the window, discount gamma^k', critic
    target at the next decision; ``replay.n_step`` then counts decisions. Demos become one
    window per demo step, their action the held offset closest to the demo's actions
    (``demo_relabel="offset"``) or the base's own (``"base"``). k = 1 is per-step ResFiT.
    ``mc_bound`` (semi-MDP, ``replay.n_step=1``): the critic's target is never below the
    discounted return the data achieved from that decision in a successful episode
    (MCAC), online (decisions are stored when their episode ends) and in the demos.
    ``window`` (semi-MDP): the held correction's shape over the k steps, "offset" (one
    value per action dimension) or "offset_slope" (an offset plus a linear ramp, 2A
    values: ``base.features.Offsets``; demos relabelled by least squares)."""

    base_phase: bool = False
    base_plan: int = 0
    time_feature: bool = False
    hold: bool = False
    offset_bound: float = 0.0
    progressive_steps: int = 0
    exploration_std_range: tuple[float, float] | None = None
    decision_steps: int = 1
    demo_relabel: str = "offset"
    mc_bound: bool = False
    window: str = "offset"

    def __post_init__(self):
        errors = number_errors(self)
        if self.window not in WINDOWS:
            errors.append(f"window must be one of {WINDOWS} (got {self.window!r})")
        elif self.window != "offset" and self.decision_steps < 2:
            errors.append(
                f"window={self.window!r} shapes the semi-MDP residual's held correction: "
                "set decision_steps > 1"
            )
        if self.decision_steps < 1:
            errors.append(f"decision_steps must be >= 1 (got {self.decision_steps})")
        if self.demo_relabel not in DEMO_RELABELS:
            errors.append(
                f"demo_relabel must be one of {DEMO_RELABELS} (got {self.demo_relabel!r})"
            )
        if self.mc_bound and self.decision_steps < 2:
            errors.append("mc_bound is an option of the semi-MDP residual: set decision_steps > 1")
        if self.decision_steps > 1 and (self.hold or self.offset_bound > 0):
            errors.append(
                "decision_steps > 1 holds the residual between decisions already; turn "
                "hold and offset_bound off with it"
            )
        if self.base_plan < 0:
            errors.append(f"base_plan must be >= 0 (got {self.base_plan})")
        if not 0.0 <= self.offset_bound <= 2.0:
            errors.append(f"offset_bound must be in [0, 2] (got {self.offset_bound})")
        if self.progressive_steps < 0:
            errors.append(f"progressive_steps must be >= 0 (got {self.progressive_steps})")
        r = self.exploration_std_range
        if r is not None and not (len(r) == 2 and 0.0 <= r[0] <= r[1] < float("inf")):
            errors.append(f"exploration_std_range must be (lo, hi) with 0 <= lo <= hi (got {r})")
        if errors:
            raise ValueError("ResidualOptions: " + "; ".join(errors) + ".")

    @property
    def any_on(self) -> bool:
        return self != ResidualOptions()

    @property
    def semi_mdp(self) -> bool:
        """Decisions every ``decision_steps`` > 1 env steps, one transition per decision."""
        return self.decision_steps > 1

    @property
    def sees_the_base(self) -> bool:
        """The learner's observation gains the base's chunk phase or plan."""
        return self.base_phase or self.base_plan > 0


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which learner state the held-out evaluation scores: ``rule`` "last", or "best": each
    seed's best periodic evaluation, step 0 (the base) included (``sim.selection``); a new
    state is kept only when its periodic success leads the kept one's by more than
    ``margin`` (0.01: 2 of 100 episodes)."""

    rule: str = "last"
    margin: float = 0.0

    def __post_init__(self):
        errors = number_errors(self)
        if self.rule not in SELECT_RULES:
            errors.append(f"rule must be one of {SELECT_RULES} (got {self.rule!r})")
        if not 0.0 <= self.margin < 1.0:
            errors.append(f"margin must be in [0, 1) (got {self.margin})")
        if errors:
            raise ValueError("Selection: " + "; ".join(errors) + ".")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Residual-training schedule and its parts. Env-step counts are totals over all
    parallel envs."""

    learner: ResidualTD3Config = ResidualTD3Config()
    replay: ReplayConfig = ReplayConfig()
    base: BaseExecution = BaseExecution()
    residual: ResidualOptions = ResidualOptions()
    select: Selection = Selection()
    method: str = "resfit"  # "resfit"; baselines (``presets.with_method``): "rlpd"
    # (the same learner with no base), "ibrl" (the base
    # and an RL actor propose, the critic picks)
    num_envs: int = 1
    updates_per_step: int = 1  # learner updates per vector step
    warmup_env_steps: int = 10_000  # phase 1: base + U(-warmup_noise, warmup_noise) residual
    warmup_noise: float = 0.2
    critic_warmup_updates: int = 10_000  # phase 2: critic-only steps
    total_env_steps: int = 300_000  # phase 3: main-loop env steps (warm-up not counted)
    steps_per_chunk: int = 100  # vector steps per jitted scan chunk
    critic_warmup_chunk: int = 1_000  # critic-only steps per jitted chunk
    eval_every: int = 10_000  # main-loop env steps between evaluations
    eval_episodes: int = 100  # exactly this many full episodes per evaluation
    final_episodes: int | None = None  # held-out final evaluation (None: eval_episodes)
    num_demos: int | None = None  # offline demos to use (None: all available)
    action_margin: float = 0.0  # widen the demo action range by this fraction before
    # normalizing, so base actions beyond the demos' range
    # are not clipped (see ActionScaler.fit)
    obs_min_std: float = 2e-4  # observation std floor (raw units: m, rad)
    mesh: tuple[int, int] = (1, 1)  # (data, seed) devices (resfit_jax.sharding): envs, their
    # replay and every batch split over the data devices,
    # gradients averaged; seeds split over the seed devices
    shards: int = 0  # data shards (0: one per data device): the run's layout;
    # a run resumes on any data-device count dividing it

    def __post_init__(self):
        errors = number_errors(self)
        if self.method not in METHODS:
            errors.append(f"method must be one of {METHODS} (got {self.method!r})")
        elif (self.method == "ibrl") != isinstance(self.learner, IBRLConfig):
            errors.append(
                f"method {self.method!r} with a {type(self.learner).__name__}: build "
                "the config with preset(task, scale, method) (sim.presets.with_method)"
            )
        res = self.residual
        if self.method != "resfit" and (
            res.sees_the_base
            or res.offset_bound
            or res.hold
            or res.semi_mdp
            or self.learner.gate_tau > float("-inf")
        ):
            errors.append(
                "residual.base_phase, base_plan, offset_bound, hold, decision_steps and "
                f"the value gate are ResFiT's options, not {self.method!r}'s"
            )
        if res.semi_mdp and self.base.temporal_ensemble is not None:
            errors.append(
                "residual.decision_steps > 1 aligns decisions with the base's chunk "
                "refills; base.temporal_ensemble predicts a chunk every step"
            )
        if res.mc_bound and self.replay.n_step != 1:
            errors.append(
                "residual.mc_bound stores one decision per return: set replay.n_step=1 "
                f"(got {self.replay.n_step})"
            )
        if res.semi_mdp and self.replay.frame_once:
            errors.append(
                "residual.decision_steps > 1 does not support replay.frame_once yet; "
                "set replay.frame_once=false"
            )
        if res.semi_mdp and self.learner.gate_tau > float("-inf"):
            errors.append("residual.decision_steps > 1 has no value gate; leave gate_tau at -inf")
        if getattr(self.learner, "residual_mask", False) and not res.hold:
            errors.append(
                "learner.residual_mask is set by residual.hold (the loop appends the "
                "flag it reads); set residual.hold=true instead"
            )
        for name in (
            "num_envs",
            "updates_per_step",
            "steps_per_chunk",
            "critic_warmup_chunk",
            "eval_every",
            "eval_episodes",
            "total_env_steps",
        ):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("warmup_env_steps", "critic_warmup_updates", "action_margin"):
            if getattr(self, name) < 0:
                errors.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if not 0.0 <= self.warmup_noise <= 1.0:
            errors.append(f"warmup_noise must be in [0, 1] (got {self.warmup_noise})")
        if self.base.temporal_ensemble is not None and res.base_phase:
            errors.append(
                "residual.base_phase has no meaning with base.temporal_ensemble (a "
                "new chunk every step)"
            )
        if (res.offset_bound > 0 or res.hold) and self.base.temporal_ensemble is not None:
            errors.append(
                "residual.offset_bound / hold reset at each new chunk; with "
                "base.temporal_ensemble that is every step, so use one or the other"
            )
        if not 0.0 < self.obs_min_std < float("inf"):
            errors.append(f"obs_min_std must be > 0 (got {self.obs_min_std})")
        errors += self._layout_errors()
        if self.final_episodes is not None and self.final_episodes < 1:
            errors.append(f"final_episodes must be >= 1 or None (got {self.final_episodes})")
        if self.num_demos is not None and self.num_demos < 1:
            errors.append(f"num_demos must be >= 1 or None (got {self.num_demos})")
        if (
            self.warmup_env_steps == 0
            and self.replay.offline_fraction < 1e-9
            and self.critic_warmup_updates > 0
        ):
            errors.append("critic warm-up needs data: set warmup_env_steps > 0 or use demos")
        if res.time_feature and self.replay.bootstrap_truncation:
            errors.append(
                "residual.time_feature makes the time limit part of the state, so "
                "truncation is terminal: set replay.bootstrap_truncation=False with it"
            )
        if errors:
            raise ValueError("TrainConfig: " + "; ".join(errors) + ".")

    @property
    def num_final_episodes(self) -> int:
        return self.eval_episodes if self.final_episodes is None else self.final_episodes

    @property
    def env_steps_per_chunk(self) -> int:
        return self.num_envs * self.steps_per_chunk

    @property
    def data_shards(self) -> int:
        """N: the envs, the online replay and each batch are split N ways (``sharding``)."""
        return self.shards or int(self.mesh[0])

    @property
    def local_replay(self) -> ReplayConfig:
        """One shard's replay: capacity and batch size divided by ``data_shards``."""
        n = self.data_shards
        return dataclasses.replace(
            self.replay, capacity=self.replay.capacity // n, batch_size=self.replay.batch_size // n
        )

    def _layout_errors(self) -> list[str]:
        if len(self.mesh) != 2 or min(self.mesh) < 1 or self.shards < 0:
            return [
                f"mesh must be (data, seed) devices >= 1 and shards >= 0 (got mesh="
                f"{tuple(self.mesh)}, shards={self.shards})"
            ]
        n, errors = self.data_shards, []
        if n % self.mesh[0]:
            errors.append(
                f"shards ({n}) must be a multiple of the mesh's data devices ({self.mesh[0]})"
            )
        rp = self.replay
        for name, size in (
            ("num_envs", self.num_envs),
            ("replay.capacity", rp.capacity),
            ("replay.batch_size's online part", rp.online_batch_size),
            ("replay.batch_size's demo part", rp.offline_batch_size),
        ):
            if size % n:
                errors.append(f"{name} ({size}) must divide into {n} data shards")
        return errors

    @property
    def warmup_chunks(self) -> int:
        return -(-self.warmup_env_steps // self.env_steps_per_chunk)

    @property
    def critic_warmup_chunks(self) -> int:
        return -(-self.critic_warmup_updates // self.critic_warmup_chunk)

    @property
    def train_chunks(self) -> int:
        """Main-loop chunks: total_env_steps rounded down to whole chunks (at least one)."""
        return max(1, self.total_env_steps // self.env_steps_per_chunk)

    @property
    def critic_steps_per_env_step(self) -> float:
        return self.updates_per_step * self.replay.utd / self.num_envs

    @property
    def critic_steps_per_decision(self) -> float:
        """The UTD of a semi-MDP run: critic steps per residual decision (k env steps)."""
        return self.critic_steps_per_env_step * self.residual.decision_steps

    def replace(self, **kw) -> TrainConfig:
        return dataclasses.replace(self, **kw)
