"""Residual training on a robot: phases, journal, checkpoints, sync or async learning.

    trainer = RobotTrainer(RobotTrainConfig(...), base, learner, normalizer, offline, out)
    trainer.run(robot, labeller, limits, num_episodes=20)

Phases (counted in usable, i.e. success or failure, journaled episodes): the first
``warmup_episodes`` run the base with a uniform residual of ``warmup_noise`` and no updates;
then ``critic_warmup_updates`` critic-only steps; then training episodes (exploration noise).

Learner modes: ``sync`` runs ``updates_per_step`` updates after every control step
(``sync_every="step"``; they count against the control period) or ``updates_per_step * T``
after each episode of T steps (``sync_every="episode"``, while the scene is reset); ``async``
updates continuously in a thread (``AsyncLearner``) and the actor takes the newest
parameters at each step.

Durability: each finished episode is journaled (``Journal``, atomic rename) before it enters
the replay; the learner state (with the run's normalizer), the demo buffer and the RNG are
checkpointed (orbax) after every
``checkpoint_every`` episodes and on an emergency stop. A new ``RobotTrainer`` on the same
``out`` restores the latest checkpoint and rebuilds the replay from the journal, so a crash
(even SIGKILL) loses at most the episode in progress. Files under ``out``: journal/,
checkpoints/, metrics.jsonl, tb/, config.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from resfit_jax.base.features import decision_inputs
from resfit_jax.base.policy import BasePolicy
from resfit_jax.learner import Learner, has_critic_warmup
from resfit_jax.normalization import Normalizer
from resfit_jax.observations import camera_shapes
from resfit_jax.robot.config import RobotTrainConfig
from resfit_jax.robot.journal import DATASET, Journal
from resfit_jax.robot.learner import AsyncLearner, PolicyRunner, RobotLearner, RunnerMode
from resfit_jax.robot.loop import EpisodeRecord, RobotInterface, run_episode
from resfit_jax.robot.operator import Label, Labeller
from resfit_jax.robot.safety import EmergencyStop, SafetyLimits
from resfit_jax.run.checkpointing import RunCheckpointer
from resfit_jax.run.configs import to_dict
from resfit_jax.run.locks import RunLock
from resfit_jax.run.logger import MetricsLogger
from resfit_jax.run.runtime import interrupts_deferred


class RobotTrainer:
    """See the module docstring. ``offline`` is the demo buffer (``demo_buffer.offline_buffer``)
    or None; ``normalizer`` the run's statistics (a restart uses the checkpoint's)."""

    def __init__(
        self,
        cfg: RobotTrainConfig,
        base: BasePolicy,
        learner: Learner,
        normalizer: Normalizer,
        offline: Any,
        out: str,
        extra_info: dict | None = None,
    ):
        self.cfg, self.base, self.learner = cfg, base, learner
        self.out = out
        self.lock = RunLock(out, "robot run").acquire()  # one process per journal
        try:
            self._open(cfg, base, learner, normalizer, offline, out, extra_info)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, cfg, base, learner, normalizer, offline, out, extra_info) -> None:
        cfg_path = os.path.join(out, "config.json")
        cfg_dict = to_dict(cfg)
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                saved = json.load(f)["config"]
            # fields added since the run started keep their defaults
            defaults = {k: v for k, v in to_dict(RobotTrainConfig()).items() if k not in saved}
            saved = saved | {k: v for k, v in defaults.items() if cfg_dict.get(k) == v}
            if saved != cfg_dict:
                diff = sorted(
                    k for k in set(saved) | set(cfg_dict) if saved.get(k) != cfg_dict.get(k)
                )
                raise ValueError(
                    f"{out} holds a robot run with a different config (fields "
                    f"{diff}); use the same flags or a new --out."
                )
        else:
            with open(cfg_path, "w") as f:
                json.dump({"config": cfg_dict, **(extra_info or {})}, f, indent=2)
        self.features, self.offsets = None, None
        if cfg.decision_steps > 1:
            self.features, self.offsets = decision_inputs(base, cfg.decision_steps)
        extra = 0 if self.features is None else self.features.size
        self.obs_dim = learner.obs_dim - extra  # the robot's; the learner also sees the plan
        if self.obs_dim < 1 or normalizer.obs.mean.shape[-1] != learner.obs_dim:
            raise ValueError(
                f"The learner observes {learner.obs_dim} values and the normalizer "
                f"{normalizer.obs.mean.shape[-1]}; with decision_steps={cfg.decision_steps} "
                f"both also see the base's plan ({extra} values): build them with "
                "robot.inputs.learner_inputs."
            )
        self.journal = Journal(os.path.join(out, "journal"))
        self.ckpt = RunCheckpointer(os.path.join(out, "checkpoints"))
        self.rl = RobotLearner(
            learner,
            cfg.replay,
            normalizer,
            cfg.loop.max_episode_steps,
            jax.random.key(cfg.seed),
            max(cfg.updates_per_step, 1),
            offline,
            cfg.failure_is_terminal,
            cfg.min_replay,
            base,
            self.features,
            self.offsets,
            cfg.mc_bound,
        )
        self.progress = {"critic_warmup_done": False, "checkpoint_episodes": 0}
        self.restored_step: int | None = None
        if self.ckpt.latest_step() is not None:
            state, prog = self.ckpt.restore(
                {"learner": self.rl.state, "key": self.rl.key, "offline": self.rl.offline}
            )
            self.rl.state, self.rl.key = state["learner"], state["key"]
            self.rl.offline = state["offline"]
            self.rl.updates = int(prog.get("updates", 0))
            self.progress.update(prog)
            self.restored_step = self.ckpt.latest_step()
        self.rebuilt = self._rebuild()
        metrics = os.path.join(out, "metrics.jsonl")
        lines = sum(1 for _ in open(metrics)) if os.path.exists(metrics) else None
        self.logger = MetricsLogger(out, [cfg.seed], keep_lines=lines)
        self.runner = PolicyRunner(
            base,
            learner,
            lambda: self.rl.state,
            jax.random.fold_in(jax.random.key(cfg.seed), 0x5EED),
            cfg.warmup_noise,
            self.features,
            self.offsets,
        )

    # -- state from disk -----------------------------------------------------------------
    def _rebuild(self) -> dict:
        """Insert every usable journaled episode into the (empty) replay, in order."""
        n_eps = n_steps = 0
        unlabelled = []
        for entry in self.journal.entries():
            if entry.label not in (Label.SUCCESS.value, Label.FAILURE.value):
                if entry.label not in (Label.ABORT.value, Label.ESTOP.value):
                    why = entry.metadata.get("metadata_error", "no label")
                    unlabelled.append(f"{entry.path} ({why})")
                continue
            ep, extras = self.journal.read(entry)
            self.rl.add_episode(ep, extras["base_action"])
            n_eps, n_steps = n_eps + 1, n_steps + ep.num_actions
        if unlabelled:  # kept on disk, but not learned from: say so
            print(
                f"warning: {len(unlabelled)} journaled episode(s) are left out of the replay "
                f"because their label is missing or unreadable: {'; '.join(unlabelled)}. Their "
                'data is kept; write {"label": "success"} or {"label": "failure"} into each '
                f"one's {DATASET}/1.0.0/resfit_metadata.json and restart to use them.",
                file=sys.stderr,
            )
        return {"episodes": n_eps, "env_steps": n_steps}

    def counts(self) -> dict:
        """The journal's episode counts and robot time (``Journal.counts``)."""
        return self.journal.counts()

    def save(self, state=None) -> None:
        c = self.counts()
        prog = dict(
            self.progress,
            updates=int(self.rl.updates),
            **c,
            checkpoint_episodes=c["episodes"],
            saves=int(self.progress.get("saves", 0)) + 1,
        )
        self.progress = prog
        self.ckpt.save(
            prog["saves"],
            {
                "learner": state if state is not None else self.rl.state,
                "key": self.rl.key,
                "offline": self.rl.offline,
            },
            prog,
        )

    # -- the run -------------------------------------------------------------------------
    def run(
        self,
        robot: RobotInterface,
        labeller: Labeller,
        limits: SafetyLimits,
        num_episodes: int,
        evaluate: str | None = None,
        progress=print,
        stop_when: Callable[[dict], bool] | None = None,
    ) -> list[dict]:
        """Run ``num_episodes`` more episodes, or fewer: ``stop_when(counts())`` is asked
        after each one (e.g. a robot-time budget). ``evaluate`` None trains; "eval" runs the
        deterministic residual and "base" the base alone (journaled, no updates).
        Returns the per-episode log rows. Raises EmergencyStop after an e-stop episode has
        been journaled and checkpointed."""
        cfg = self.cfg
        self._check_robot(robot)
        rows, async_l = [], None
        self._compile(robot)
        try:
            for _ in range(num_episodes):
                c = self.counts()
                phase = evaluate or (
                    "warmup" if c["usable_episodes"] < cfg.warmup_episodes else "train"
                )
                if (
                    phase == "train"
                    and not self.progress["critic_warmup_done"]
                    and self.rl.ready()
                    and has_critic_warmup(self.learner)
                ):
                    t0 = time.time()
                    m = self.rl.critic_warmup(cfg.critic_warmup_updates)
                    self.progress["critic_warmup_done"] = True
                    self.save()
                    progress(
                        f"critic warm-up: {cfg.critic_warmup_updates} updates in "
                        f"{time.time() - t0:.1f} s {m}"
                    )
                if phase == "train" and cfg.mode == "async" and async_l is None:
                    async_l = AsyncLearner(self.rl, cfg.max_update_ratio)
                    async_l.env_steps = c["env_steps"]
                    async_l.start()
                self.runner.mode = phase
                self.runner.params = async_l.params if async_l else (lambda: self.rl.state)
                step_updates = (
                    phase == "train"
                    and cfg.mode == "sync"
                    and cfg.sync_every == "step"
                    and cfg.updates_per_step > 0
                )
                updates_before = self.rl.updates
                rec = run_episode(
                    robot,
                    self.runner,
                    labeller,
                    limits,
                    cfg.loop,
                    episode=c["episodes"],
                    after_step=self._step_update if step_updates else None,
                )
                row = self._finish(rec, phase, async_l, updates_before)
                rows.append(row)
                progress(_describe(row))
                if rec.label == Label.ESTOP:
                    self.save(async_l.params() if async_l else None)
                    raise EmergencyStop(
                        f"emergency stop ({rec.reason}{': ' + rec.error if rec.error else ''}); "
                        f"the episode was journaled as {row.get('journal')}."
                    )
                if (row["episode"] + 1) % cfg.checkpoint_every == 0:
                    self.save(async_l.params() if async_l else None)
                if stop_when is not None and stop_when(self.counts()):
                    break
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM between episodes (e.g. in the updates)
            if async_l is None:
                self.save()
            raise
        finally:
            if async_l is not None:
                async_l.stop()  # the thread's last state is in self.rl.state
                self.save()
            self.logger.flush()
        return rows

    def _check_robot(self, robot: RobotInterface) -> None:
        """ValueError naming the mismatch if the robot's sizes or cameras are not the learner's."""
        if robot.action_size != self.learner.action_dim:
            raise ValueError(
                f"The robot has {robot.action_size} action dims; the base and "
                f"learner have {self.learner.action_dim}."
            )
        if robot.observation_size != self.obs_dim:
            raise ValueError(
                f"The robot observes {robot.observation_size} values; the "
                f"learner expects {self.obs_dim}."
            )
        cams = dict(getattr(robot, "cameras", None) or {})
        if cams != self._cameras:
            raise ValueError(
                f"The robot's cameras are {cams or 'none'}; the learner expects "
                f"{self._cameras or 'none'} (name -> frame shape)."
            )

    def ab_policies(self, robot: RobotInterface) -> dict:
        """The two policies of a blind A/B session (``robot.blind_ab.run_ab``) on ``robot``,
        checked and compiled: the run's deterministic residual ("resfit") and the base alone
        ("base"), outside the run's journal and replay (nothing is learned from them)."""
        self._check_robot(robot)
        self.runner.params = lambda: self.rl.state
        self._compile(robot)
        return {"base": RunnerMode(self.runner, "base"), "resfit": RunnerMode(self.runner, "eval")}

    def _step_update(self) -> None:
        """Sync updates inside the control period: after every step, or after every
        decision's first step with semi-MDP decisions (one per stored transition)."""
        if self.runner.steps % self.cfg.decision_steps == 1 % self.cfg.decision_steps:
            self.rl.update()

    def _compile(self, robot: RobotInterface) -> None:
        """Compile the actor (and the sync step update) before the first tick, so the
        first control steps are not late."""
        obs = np.zeros(self.obs_dim, np.float32)
        if self._cameras:
            obs = {"state": obs, **{c: np.zeros(v, np.uint8) for c, v in self._cameras.items()}}
        mode = self.runner.mode
        for m in ("base", "train", "eval", "warmup"):
            self.runner.mode = m
            self.runner.begin()
            self.runner.act(obs, self.runner.base_action(obs))
        self.runner.mode = mode
        if self.rl.ready():
            self.rl.compile_update()

    @property
    def _cameras(self) -> dict:
        """Camera name -> frame shape of the learner's observations ({} without)."""
        if not getattr(self.learner, "pixels", False):
            return {}
        return camera_shapes(self.learner.obs_spec)

    def _finish(self, rec: EpisodeRecord, phase: str, async_l, updates_before: int) -> dict:
        """Journal (first), then replay, then sync updates and the log row."""
        cfg = self.cfg
        c = self.counts()
        row = {
            "kind": "robot_episode",
            "seed": cfg.seed,
            "phase": phase,
            "episode": c["episodes"],
            **rec.stats(),
        }
        row.pop("clipped_per_dim")
        if rec.steps == 0:
            row["journal"] = None  # nothing was executed: nothing to keep
            return row
        meta = dict(rec.stats(), phase=phase, time=time.time())
        with interrupts_deferred():  # a signal here must not lose the episode
            entry = self.journal.write(rec.to_episode(cfg.failure_is_terminal), rec.extras(), meta)
            row["journal"] = os.path.relpath(entry.path, self.out)
            if rec.usable:
                if async_l is not None:
                    async_l.submit(rec.to_episode(cfg.failure_is_terminal), rec.base_action)
                else:
                    self.rl.add_record(rec)
        if phase == "train" and cfg.mode == "sync" and cfg.sync_every == "episode":
            for _ in range(-(-rec.steps // cfg.decision_steps)):  # per stored transition
                self.rl.update()
        c = self.counts()
        row.update(
            env_steps=c["env_steps"],
            successes_total=c["successes"],
            updates=int(self.rl.updates),
            replay=int(self.rl.replay_size),
        )
        metrics = async_l.metrics if async_l is not None else {}
        row.update({k: v for k, v in metrics.items() if isinstance(v, float)})
        row["updates_this_episode"] = int(self.rl.updates) - updates_before
        self.logger.write(row)
        return row

    def close(self) -> None:
        self.logger.close()
        self.ckpt.close()
        self.lock.release()


def _describe(row: dict) -> str:
    if row.get("journal") is None:
        return f"episode {row['episode']}: nothing executed ({row['reason']})"
    return (
        f"episode {row['episode']} [{row['phase']}]: {row['label']} ({row['reason']}) in "
        f"{row['steps']} steps, {row['wall_s']:.1f} s; overruns {row['overruns']}, "
        f"clipped steps {row['clipped_steps']}, max step {row['max_step_ms']:.1f} ms; "
        f"updates {row.get('updates', 0)}, replay {row.get('replay', 0)}"
    )
