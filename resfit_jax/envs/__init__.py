"""Environments: functional protocol, wrappers, MJX manipulation tasks and a registry.

env = envs.make("PickPlace", episode_length=150)     # keyword overrides
env = envs.make("PickPlace", control="ee_delta")     # delta end-effector actions
expert = envs.make_expert("PickPlace", env, ExpertStyle.human(0.5))

``PickPlaceEE``, ``PegInsertionEE``, ``BimanualHandoverEE`` (and their Pixel variants) are
the arm tasks with ``control="ee_delta"`` under names of their own, so demos, bases and runs
record which action space they belong to.
"""

from __future__ import annotations

from collections.abc import Callable

from resfit_jax.envs.core import AutoReset, Env, EpisodeWrapper, State, VmapWrapper, Wrapper
from resfit_jax.envs.pixel_point_reach import PixelPointReach
from resfit_jax.envs.point_reach import PointReach
from resfit_jax.envs.randomization import DomainRandomization, RandomizationConfig
from resfit_jax.envs.scripted import ExpertStyle


def _arm_task(module: str, cls: str, default_control: str = "joint"):
    """A factory of an MJX arm task; ``control``, ``ee_lin_scale`` and ``ee_ang_scale``
    choose its action space (``MjxTask.use_control``), the rest go to the constructor."""

    def build(control: str = default_control, ee_lin_scale=0.03, ee_ang_scale=0.25, **kw):
        import importlib

        task = getattr(importlib.import_module(f"resfit_jax.envs.{module}"), cls)(**kw)
        return task.use_control(control, ee_lin_scale, ee_ang_scale)

    build.__name__ = cls if default_control == "joint" else f"{cls}EE"
    return build


_pick_place = _arm_task("pick_place", "PickPlace")
_peg_insertion = _arm_task("peg_insertion", "PegInsertion")
_bimanual_handover = _arm_task("bimanual_handover", "BimanualHandover")


def _pixel(name: str, factory: Callable[..., Env]):
    """The camera variant of an MJX task: ``PixelTask`` at ``resolution`` px (default 84, the
    paper's) with its default cameras; other keywords go to the task."""

    def build(resolution: int = 84, cameras=None, **kw):
        from resfit_jax.envs.cameras import PixelTask

        return PixelTask(factory(**kw), resolution, cameras)

    build.__name__ = f"Pixel{name}"
    return build


def _expert(module: str, cls: str):
    def build(env, style):
        import importlib

        return getattr(importlib.import_module(f"resfit_jax.envs.{module}"), cls)(env, style)

    return build


_REGISTRY: dict[str, Callable[..., Env]] = {
    "PointReach": PointReach,
    "PixelPointReach": PixelPointReach,
    "PickPlace": _pick_place,
    "PegInsertion": _peg_insertion,
    "BimanualHandover": _bimanual_handover,
}
_EXPERTS: dict[str, Callable] = {
    "PointReach": _expert("point_reach", "PointReachExpert"),
    "PixelPointReach": _expert("pixel_point_reach", "PixelPointReachExpert"),
    "PickPlace": _expert("pick_place", "PickPlaceExpert"),
    "PegInsertion": _expert("peg_insertion", "PegInsertionExpert"),
    "BimanualHandover": _expert("bimanual_handover", "BimanualHandoverExpert"),
}
MANIPULATION_TASKS = ("PickPlace", "PegInsertion", "BimanualHandover")
_MODULES = {
    "PickPlace": "pick_place",
    "PegInsertion": "peg_insertion",
    "BimanualHandover": "bimanual_handover",
}
for _name in MANIPULATION_TASKS:  # PickPlaceEE, ...: delta end-effector actions
    _REGISTRY[f"{_name}EE"] = _arm_task(_MODULES[_name], _name, "ee_delta")
    _EXPERTS[f"{_name}EE"] = _EXPERTS[_name]
for _name in MANIPULATION_TASKS + tuple(f"{n}EE" for n in MANIPULATION_TASKS):
    # PixelPickPlace, ...: cameras instead of object poses
    _REGISTRY[f"Pixel{_name}"] = _pixel(_name, _REGISTRY[_name])
    _EXPERTS[f"Pixel{_name}"] = _EXPERTS[_name]


def register(name: str, factory: Callable[..., Env], expert: Callable | None = None) -> None:
    _REGISTRY[name] = factory
    if expert is not None:
        _EXPERTS[name] = expert


def make(name: str, **overrides) -> Env:
    """Build a registered task by name; keyword overrides go to its constructor."""
    if name not in _REGISTRY:
        raise KeyError(f"Unknown task {name!r}; registered: {sorted(_REGISTRY)}.")
    return _REGISTRY[name](**overrides)


def make_expert(name: str, env: Env, style: ExpertStyle = ExpertStyle()):
    """The scripted expert of a task (see resfit_jax.envs.scripted)."""
    if name not in _EXPERTS:
        raise KeyError(f"No scripted expert for {name!r}; available: {sorted(_EXPERTS)}.")
    task = env.unwrapped
    if getattr(task, "control", "joint") == "ee_delta":  # the same script, emitting deltas
        from resfit_jax.envs.ee_control import DeltaExpert

        return DeltaExpert(_EXPERTS[name](task, style), task)
    return _EXPERTS[name](env, style)


__all__ = [
    "AutoReset",
    "DomainRandomization",
    "Env",
    "EpisodeWrapper",
    "ExpertStyle",
    "MANIPULATION_TASKS",
    "PixelPointReach",
    "PointReach",
    "RandomizationConfig",
    "State",
    "VmapWrapper",
    "Wrapper",
    "make",
    "make_expert",
    "register",
]
