"""The pieces of a robot run that exist before a robot is touched, shared by
``experiments.run_robot`` and ``studies.robot_time``: a task's simulated learner preset
under a recipe as a ``RobotTrainConfig``, the base and its demos, the learner inputs and
the safety limits."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class RobotSetup:
    """What a robot run needs before a robot is touched: the task, the run's config, the
    base and its demos, the learner with its normalizer and demo buffer."""

    task: object
    cfg: object  # RobotTrainConfig
    base: object
    info: dict
    demos_dir: str
    demos: list
    learner: object
    normalizer: object
    offline: object
    obs_dim: int
    act_dim: int

    def limits(self, robot, max_delta_margin: float):
        """SafetyLimits for ``robot``: the task's bounds, the change limit from the demos."""
        import numpy as np

        from resfit_jax.robot.safety import SafetyLimits

        return SafetyLimits.from_demos(
            self.demos,
            np.asarray(self.task.action_low),
            np.asarray(self.task.action_high),
            max_delta_margin,
            _spec(robot).get("action_obs_index", getattr(self.task, "action_obs_index", None)),
        )


def robot_setup(
    task_name: str,
    base_path: str,
    demos_path: str | None = None,
    recipe: str | None = None,
    *,
    mode: str = "sync",
    sync_every: str = "episode",
    updates_per_step: int = 1,
    max_update_ratio: float | None = None,
    warmup_episodes: int = 2,
    critic_warmup: int = 500,
    control_hz: float | None = None,
    max_steps: int | None = None,
    max_overruns: int = 20,
    seed: int = 0,
    announce=print,
) -> RobotSetup:
    """The task's learner preset under ``recipe`` (default: ``sim.presets.default_recipe``)
    as a ``RobotTrainConfig``, the base and demos of ``base_path``, and the learner inputs.
    ValueError / KeyError / FileNotFoundError name a bad argument."""
    from resfit_jax import envs
    from resfit_jax.bc.frozen import open_base_and_demos
    from resfit_jax.observations import camera_shapes, state_size
    from resfit_jax.replay.demos import fit_normalizer
    from resfit_jax.robot.config import RobotTrainConfig
    from resfit_jax.robot.inputs import learner_inputs
    from resfit_jax.robot.loop import LoopConfig
    from resfit_jax.run.configs import config_lines, resolve
    from resfit_jax.sim.presets import default_recipe, preset, with_recipe

    task = envs.make(task_name)
    recipe = recipe or default_recipe(task_name)
    sim_cfg = with_recipe(preset(task_name, "cpu"), recipe)
    if sim_cfg.residual.window != "offset":  # not carried by RobotTrainConfig
        raise ValueError(
            f"--recipe={recipe}: residual.window={sim_cfg.residual.window!r} runs in "
            "simulation only; the robot loop holds one offset per decision."
        )
    spec = task.observation_spec  # a camera task (PixelPickPlace): a dict
    obs_dim, act_dim, cameras = state_size(spec), task.action_size, camera_shapes(spec)
    cfg = resolve(
        lambda: RobotTrainConfig(
            learner=sim_cfg.learner,
            replay=dataclasses.replace(sim_cfg.replay, capacity=100_000),
            loop=LoopConfig(
                control_hz=control_hz or 1.0 / task.dt,
                max_episode_steps=max_steps or task.horizon,
                max_overruns=max_overruns,
            ),
            mode=mode,
            sync_every=sync_every,
            updates_per_step=updates_per_step,
            max_update_ratio=max_update_ratio,
            warmup_episodes=warmup_episodes,
            warmup_noise=sim_cfg.warmup_noise,
            critic_warmup_updates=critic_warmup,
            seed=seed,
            min_replay=max(4, 64 // sim_cfg.residual.decision_steps),  # transitions
            decision_steps=sim_cfg.residual.decision_steps,
            mc_bound=sim_cfg.residual.mc_bound,
            demo_relabel=sim_cfg.residual.demo_relabel,
        )
    )
    base, info, demos_dir, demos = open_base_and_demos(
        base_path, demos_path, obs_dim, act_dim, cameras=cameras
    )
    announce(f"Resolved config:\n{config_lines(cfg)}")
    normalizer = fit_normalizer(
        demos, cfg.learner.action_scale, sim_cfg.action_margin, sim_cfg.obs_min_std
    )
    learner, normalizer, offline = learner_inputs(
        cfg, base, spec, act_dim, normalizer, demos, sim_cfg.obs_min_std
    )
    if cfg.decision_steps > 1:
        k = cfg.decision_steps
        announce(
            f"semi-MDP residual: a decision every {k} control steps, "
            f"{cfg.updates_per_step * cfg.replay.utd} critic steps per decision; learning "
            f"starts at {cfg.min_replay} decisions"
        )
    return RobotSetup(
        task, cfg, base, info, demos_dir, demos, learner, normalizer, offline, obs_dim, act_dim
    )


def _spec(robot) -> dict:
    """A robot's spec: RemoteRobot holds it, SimRobot computes it."""
    spec = getattr(robot, "spec", None) or {}
    return spec() if callable(spec) else spec
