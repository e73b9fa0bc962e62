"""The robot loop: a thin host loop that runs base + residual on a robot at a fixed rate.

    robot.reset() -> obs_0
    every control tick t:  obs_t -> base (a_b) -> residual (r) -> clip(a_b + r) -> unnormalize
                           -> safety limits -> robot.send_action(command_t)
                           -> operator label? -> [sync updates] -> wait for the next tick
    end (label, step limit, too many deadline overruns, e-stop) -> obs_T (final)

Everything that learns is the jitted learner (``robot.learner``); this module only
does I/O, timing and safety:

- ``RobotInterface``: what a robot driver implements (``reset``, ``observe``,
  ``send_action``, ``stop``; sizes as attributes).
- ``SafetyLimits``: absolute bounds and a maximum change per step, applied to every command
  after base + residual; clipping is counted and reported per episode.
- ``RateClock``: fixed-rate ticks with deadline monitoring; an overrun is a step whose work
  ended more than ``tolerance_s`` after its tick. More than ``max_overruns`` in an episode
  halts the robot and ends the episode (label abort, reason ``deadline``).
- ``run_episode``: one episode into an ``EpisodeRecord`` (everything needed to journal it).
  On an emergency stop (operator ``x``, Ctrl-C, a non-finite observation or command, a robot
  error) the robot is halted first; the record is returned with label ``estop`` so that the
  caller journals it before stopping: no collected data is lost.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from resfit_jax.data.rlds import Episode
from resfit_jax.observations import state_of
from resfit_jax.robot.operator import Label, Labeller
from resfit_jax.robot.safety import RateClock, SafetyLimits
from resfit_jax.run.validation import number_errors


class RobotInterface(Protocol):
    """A robot driver. Observations [O] and actions [A] are float32 in task units. A robot
    with cameras also has ``cameras`` (name -> image shape [H, W, C]); its observations are
    then {"state": [O] float32, camera: uint8 [H, W, C], ...}, one frame per camera per tick.

    reset() blocks until a new episode can start (a person or a script resets the scene) and
    returns the first observation. send_action() commands the robot and returns at once;
    the loop calls it once per control tick. stop() halts all motion now (emergency stop)
    and must be safe to call at any time, even twice. A robot that can start a named scene
    exactly (a simulated one) also has ``exact_scenes = True`` and ``set_scene(i)`` (the next
    reset starts scene i; blind A/B sessions use it for matched initial conditions).
    """

    observation_size: int
    action_size: int

    def reset(self) -> np.ndarray: ...

    def observe(self) -> np.ndarray: ...

    def send_action(self, action: np.ndarray) -> None: ...

    def stop(self) -> None: ...


# ------------------------------------------------------------------------------ episode
@dataclasses.dataclass
class EpisodeRecord:
    """One robot episode. T actions, T + 1 observations."""

    observation: np.ndarray  # [T+1, O] the state

    base_action: np.ndarray  # [T+1, A] raw base action at every observation
    residual: np.ndarray  # [T, A] normalized residual
    command: np.ndarray  # [T, A] what was sent (after safety limits)
    clipped: np.ndarray  # [T, A] bool: the safety limits changed this dim
    step_s: np.ndarray  # [T] wall time of each control step's work
    label: Label
    reason: str  # "operator", "timeout", "deadline", "estop", ...
    overruns: int
    timed_out: bool
    wall_s: float
    error: str = ""
    images: dict[str, np.ndarray] | None = None  # camera -> uint8 [T+1, H, W, C]

    @property
    def steps(self) -> int:
        return int(self.command.shape[0])

    @property
    def usable(self) -> bool:
        """True if the episode may train the learner (not aborted / e-stopped, >= 1 step)."""
        return self.label in (Label.SUCCESS, Label.FAILURE) and self.steps > 0

    def terminal(self, failure_is_terminal: bool = True) -> bool:
        if self.label == Label.SUCCESS:
            return True
        return bool(self.label == Label.FAILURE and not self.timed_out and failure_is_terminal)

    def to_episode(self, failure_is_terminal: bool = True) -> Episode:
        """RLDS episode: the executed commands as actions; reward 1 on the last step of a
        success; terminal (discount 0) on success and on an operator failure."""
        obs = {"state": self.observation, **self.images} if self.images else self.observation
        ep = Episode.from_rollout(obs, self.command, success=self.label == Label.SUCCESS)
        if self.terminal(failure_is_terminal) and self.label != Label.SUCCESS:
            ep.is_terminal[-1] = True
            ep.discount[-1] = 0.0
        return ep

    def extras(self) -> dict[str, np.ndarray]:
        return {
            "base_action": self.base_action,
            "residual": self.residual,
            "clipped": self.clipped,
            "step_s": self.step_s,
        }

    def stats(self) -> dict:
        c = self.clipped
        return {
            "label": self.label.value,
            "reason": self.reason,
            "steps": self.steps,
            "timed_out": self.timed_out,
            "overruns": self.overruns,
            "clipped_steps": int(c.any(axis=1).sum()) if c.size else 0,
            "clipped_per_dim": c.sum(axis=0).astype(int).tolist() if c.size else [],
            "max_step_ms": float(self.step_s.max() * 1e3) if self.step_s.size else 0.0,
            "mean_step_ms": float(self.step_s.mean() * 1e3) if self.step_s.size else 0.0,
            "wall_s": self.wall_s,
            "error": self.error,
        }


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Timing and episode limits of the robot loop."""

    control_hz: float = 20.0
    max_episode_steps: int = 120
    deadline_tolerance_s: float | None = None  # default: a quarter of the period
    max_overruns: int = 20  # per episode; more halts the episode

    def __post_init__(self):
        errors = number_errors(
            self,
            positive=("control_hz", "deadline_tolerance_s"),
            at_least_one=("max_episode_steps",),
            non_negative=("max_overruns",),
        )
        if errors:
            raise ValueError("LoopConfig: " + "; ".join(errors) + ".")

    @property
    def tolerance_s(self) -> float:
        if self.deadline_tolerance_s is not None:
            return float(self.deadline_tolerance_s)
        return 0.25 / self.control_hz


class Policy(Protocol):
    """What the loop needs from the learner side (``robot_learner.PolicyRunner``)."""

    def begin(self) -> None: ...

    def base_action(self, obs: np.ndarray) -> np.ndarray: ...

    def act(self, obs: np.ndarray, base_action: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def _check_obs(obs, size: int, cameras: dict | None = None):
    """The observation as float32 [O] (with ``cameras``: the dict with uint8 frames), or a
    ValueError naming what is wrong."""
    if cameras:
        if not isinstance(obs, dict) or set(obs) != {"state", *cameras}:
            raise ValueError(
                f"robot observation must be a dict with 'state' and the cameras "
                f"{sorted(cameras)}; got "
                f"{sorted(obs) if isinstance(obs, dict) else type(obs).__name__}."
            )
        out = {"state": _check_obs(obs["state"], size)}
        for c, shape in cameras.items():
            img = np.asarray(obs[c])
            if img.dtype != np.uint8 or img.shape != tuple(shape):
                raise ValueError(
                    f"robot camera {c!r} gave shape {img.shape} dtype {img.dtype}; "
                    f"expected uint8 {tuple(shape)}."
                )
            out[c] = img
        return out
    o = np.asarray(obs, np.float32)
    if o.shape != (size,):
        raise ValueError(f"robot observation has shape {o.shape}, expected ({size},).")
    if not np.all(np.isfinite(o)):
        raise ValueError(
            f"robot observation is not finite (entries {np.flatnonzero(~np.isfinite(o)).tolist()})."
        )
    return o


def _check_base(a_b: np.ndarray, t: int) -> np.ndarray:
    """The base's action [A]; ValueError (the loop stops the robot) if it is not finite."""
    a_b = np.asarray(a_b, np.float32)
    if not np.all(np.isfinite(a_b)):
        raise ValueError(
            f"the base policy returned a non-finite action at step {t} (entries "
            f"{np.flatnonzero(~np.isfinite(a_b)).tolist()}); nothing was sent. Check the "
            "base's checkpoint and normalizer."
        )
    return a_b


def _stop(robot: RobotInterface) -> str:
    """Stop the robot after a failure; the episode's data is kept even if the stop fails too
    (a lost link: the robot server stops the robot itself when a session ends abnormally)."""
    try:
        robot.stop()
        return ""
    except Exception as e:
        return f"; robot.stop() failed too ({type(e).__name__}: {e})"


def _blank(size: int, cameras: dict):
    state = np.zeros(size, np.float32)
    if not cameras:
        return state
    return {"state": state, **{c: np.zeros(tuple(s), np.uint8) for c, s in cameras.items()}}


def run_episode(
    robot: RobotInterface,
    policy: Policy,
    labeller: Labeller,
    limits: SafetyLimits,
    cfg: LoopConfig,
    episode: int = 0,
    after_step: Callable[[], None] | None = None,
    clock: RateClock | None = None,
) -> EpisodeRecord:
    """Run one episode (see the module docstring). ``policy.act(obs, a_b)`` returns
    (residual [A] normalized, action [A] raw, before the safety limits); ``after_step`` runs
    inside each control period (e.g. sync learner updates)."""
    size = int(robot.observation_size)
    cameras = dict(getattr(robot, "cameras", None) or {})
    if limits.action_size != robot.action_size:
        raise ValueError(
            f"SafetyLimits are for {limits.action_size} action dims, the robot "
            f"has {robot.action_size}."
        )
    obs_l, base_l, res_l, cmd_l, clip_l, dt_l = [], [], [], [], [], []
    label, reason, overruns, timed_out, error = None, "", 0, False, ""
    t_start = time.perf_counter()
    policy.begin()
    labeller.begin(episode)
    clock = clock or RateClock(cfg.control_hz, cfg.tolerance_s)
    last_obs = None
    try:
        obs = last_obs = _check_obs(robot.reset(), size, cameras)
        prev = limits.initial_command(obs)
        clock.start()
        for t in range(cfg.max_episode_steps):
            t0 = time.perf_counter()
            if t > 0:
                obs = last_obs = _check_obs(robot.observe(), size, cameras)
            a_b = _check_base(policy.base_action(obs), t)
            r, raw = policy.act(obs, a_b)
            cmd, clipped = limits.apply(prev, raw)
            robot.send_action(cmd)
            prev = cmd
            obs_l.append(obs), base_l.append(a_b), res_l.append(r)
            cmd_l.append(cmd), clip_l.append(clipped)
            label = labeller.poll(t, obs)
            if label is None and after_step is not None:
                after_step()
            dt_l.append(time.perf_counter() - t0)
            if label is not None:
                reason = "operator"
                break
            if clock.overrun(clock.wait()):
                overruns += 1
                if overruns > cfg.max_overruns:
                    label, reason = Label.ABORT, "deadline"
                    robot.stop()
                    break
        else:
            timed_out, reason = True, "timeout"
            label = labeller.at_end(True)
        if label == Label.ESTOP:
            robot.stop()
            reason = "operator estop"
        final = _check_obs(robot.observe(), size, cameras)
    except KeyboardInterrupt:
        label, reason, final = Label.ESTOP, "keyboard interrupt", None
        error = _stop(robot).lstrip("; ")
    except Exception as e:  # robot I/O error, non-finite observation or command
        label, reason, final, error = Label.ESTOP, "error", None, f"{type(e).__name__}: {e}"
        error += _stop(robot)
    if final is None:
        final = last_obs if last_obs is not None else _blank(size, cameras)
    try:
        base_l.append(policy.base_action(final))
    except Exception:  # keep the data even if the base cannot run any more
        base_l.append(base_l[-1] if base_l else np.zeros(limits.action_size, np.float32))
    dt_l += [float("nan")] * (len(cmd_l) - len(dt_l))
    a = limits.action_size
    stack = lambda xs, shape: np.stack(xs).astype(np.float32) if xs else np.zeros(shape, np.float32)
    frames = obs_l + [final]
    images = {c: np.stack([o[c] for o in frames]) for c in cameras} if cameras else None
    states = [state_of(o) for o in frames]
    return EpisodeRecord(
        observation=np.stack(states).astype(np.float32),
        images=images,
        base_action=stack(base_l, (0, a)),
        residual=stack(res_l, (0, a)),
        command=stack(cmd_l, (0, a)),
        clipped=np.stack(clip_l) if clip_l else np.zeros((0, a), bool),
        step_s=np.asarray(dt_l, np.float64),
        label=Label(label),
        reason=reason,
        overruns=overruns,
        timed_out=timed_out,
        wall_s=time.perf_counter() - t_start,
        error=error,
    )
