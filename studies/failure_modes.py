"""Why episodes fail: the outcome of every evaluation episode of a residual run, for its base
and for its final residual policy, on the run's own matched evaluation episodes.

    python -m studies.failure_modes --run=runs/residual/PickPlace

Reads the run's config.json (task, base, demos, preset and overrides), restores its latest
checkpoint, replays the evaluation with observations recorded, and sorts every episode into
an outcome from its observation trajectory (``OUTCOMES`` per task). Prints one table per
seed plus the totals, with a transition matrix base -> residual on the same episodes, and
writes JSON with the machine description. This answers where a plateau comes from: failures
the residual cannot reach (the object never grasped) or ones it could fix (placement).
"""

from __future__ import annotations

import collections
import json
import os

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("run", "runs/residual/PickPlace", "A train_residual run directory.")
flags.DEFINE_bool(
    "base_only",
    False,
    "Classify the base's episodes only (no checkpoint "
    "needed, e.g. for a run written by an older version).",
)
flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/failures_<run>.json).")

LIFT = 0.02  # m above the resting height that counts as lifted
HELD = 0.045  # m: object centre within this of the tcp counts as held
REACH = 0.025  # m: the tcp came this close to the object centre


def _pickplace(obs: np.ndarray, success: bool) -> str:
    """obs [L, 28] of one episode (see envs/pick_place.py for the layout)."""
    from resfit_jax.envs.pick_place import CUBE_HALF, TOTE_INNER_HALF

    if success:
        return "success"
    cube, tcp, tote = obs[:, 16:19], obs[:, 13:16], obs[-1, 26:28]
    end = cube[-1]
    held = np.linalg.norm(end - tcp[-1]) < HELD and end[2] > CUBE_HALF + 0.005
    inside = np.all(np.abs(end[:2] - tote) < TOTE_INNER_HALF - CUBE_HALF + 0.005)
    if cube[:, 2].max() < CUBE_HALF + LIFT:
        reached = np.linalg.norm(cube - tcp, axis=1).min() < REACH
        return (
            "grasp failed (reached the cube, never lifted)" if reached else "never reached the cube"
        )
    if held:
        over = np.all(np.abs(end[:2] - tote) < TOTE_INNER_HALF)
        return (
            "held over the tote at the time limit"
            if over
            else "held away from the tote at the time limit"
        )
    if inside:
        return "released over the tote, not resting (on a wall)"
    return "dropped outside the tote"


def _peg(obs: np.ndarray, success: bool) -> str:
    """obs [L, 32] of one episode (see envs/peg_insertion.py for the layout)."""
    from resfit_jax.envs.peg_insertion import PEG_HALF

    if success:
        return "success"
    peg, tcp = obs[:, 16:19], obs[:, 13:16]
    end, off = peg[-1], np.linalg.norm(obs[-1, 30:32])
    if peg[:, 2].max() < PEG_HALF[2] + LIFT:
        reached = np.linalg.norm(peg - tcp, axis=1).min() < 0.05
        return (
            "grasp failed (reached the peg, never lifted)" if reached else "never reached the peg"
        )
    held = np.linalg.norm(end - tcp[-1]) < 0.08
    if held and off < 0.02:
        return "held over the hole, not inserted"
    if held:
        return "held, off the hole (> 2 cm)"
    return "dropped"


OUTCOMES = {"PickPlace": _pickplace, "PegInsertion": _peg}


def classify(task: str, obs: np.ndarray, success: np.ndarray, length: np.ndarray) -> list[str]:
    """Outcome of each episode; obs [T, N, D] from sim.evaluation.run_episodes(record=True)."""
    if task not in OUTCOMES:
        raise ValueError(f"No outcome classifier for task {task!r}; known: {sorted(OUTCOMES)}.")
    fn = OUTCOMES[task]
    return [fn(obs[: max(int(length[i]), 1), i], bool(success[i])) for i in range(len(success))]


def _rollouts(run: str, base_only: bool) -> tuple[dict, dict, dict]:
    """Rebuild the run's trainer; recorded evaluations of the base and (unless base_only) the
    latest checkpoint's residual policy on the run's evaluation keys."""
    import jax

    from resfit_jax import envs
    from resfit_jax.base.residual import ResidualPolicy
    from resfit_jax.bc.frozen import open_base
    from resfit_jax.data import read_episodes
    from resfit_jax.run.checkpointing import RunCheckpointer
    from resfit_jax.run.configs import apply_overrides
    from resfit_jax.sim.evaluation import episode_keys, run_episodes
    from resfit_jax.sim.presets import preset
    from resfit_jax.sim.trainer import make_trainer

    with open(os.path.join(run, "config.json")) as f:
        info = json.load(f)
    task = envs.make(info["task"])
    cfg = apply_overrides(
        preset(info["task"], info.get("scale", "cpu"), info.get("method", "resfit")),
        info.get("overrides", []),
    )
    base, _ = open_base(info["base"], int(task.observation_spec.shape[0]), task.action_size)
    trainer = make_trainer(task, base, read_episodes(info["demos"]), cfg, info["seeds"])
    loop, n, keys = trainer.loop, cfg.eval_episodes, trainer.evaluator.eval_keys()
    prog = {"env_steps": 0}
    normalizer = trainer.normalizer
    if not base_only:
        ckpt = RunCheckpointer(os.path.join(run, "checkpoints"))
        restored, prog = ckpt.restore({"loop": trainer.init(), "offline": trainer.offline})
        ckpt.close()
        ls = restored["loop"]
        normalizer = jax.tree.map(lambda x: x[0], ls.learner_state.normalizer)

    def evaluate(lstate, key, nz):
        policy = ResidualPolicy(
            loop.base,
            nz,
            None if lstate is None else loop.learner,
            lstate,
            loop.features,
            loop.offsets,
        )
        return run_episodes(trainer.task, policy, episode_keys(key, n), record=True)

    results = {
        "base": jax.device_get(jax.jit(jax.vmap(lambda key: evaluate(None, key, normalizer)))(keys))
    }
    if not base_only:
        results["resfit"] = jax.device_get(
            jax.jit(jax.vmap(lambda lstate, key: evaluate(lstate, key, lstate.normalizer)))(
                ls.learner_state, keys
            )
        )
    return info, prog, results


def main(argv):
    del argv
    from resfit_jax.run.machine import machine_info, write_results
    from resfit_jax.run.runtime import setup_script

    setup_script()
    info, prog, results = _rollouts(FLAGS.run, FLAGS.base_only)
    name, seeds, policies = info["task"], info["seeds"], list(results)
    n = int(results["base"]["success"].shape[1])
    rows, totals, moves = [], collections.Counter(), collections.Counter()
    for i, seed in enumerate(seeds):
        labels = {
            who: classify(name, r["obs"][i], r["success"][i], r["length"][i])
            for who, r in results.items()
        }
        for who, lab in labels.items():
            for k, c in collections.Counter(lab).items():
                rows.append({"seed": seed, "policy": who, "outcome": k, "episodes": c})
                totals[(who, k)] += c
        if "resfit" in labels:
            moves.update(zip(labels["base"], labels["resfit"]))

    total = n * len(seeds)
    print(
        f"{name}: {FLAGS.run}, policy at {prog['env_steps']:,} main-loop env steps; "
        f"{n} matched episodes per seed, seeds {seeds}"
    )
    print(f"\n{'outcome':<50}" + "".join(f"{w:>8}" for w in policies))
    for k in sorted({k for _, k in totals}, key=lambda k: (k != "success", k)):
        print(f"{k:<50}" + "".join(f"{totals[(w, k)] / total:>8.1%}" for w in policies))
    if moves:
        print("\nsame episodes, base outcome -> resfit outcome (episodes, all seeds):")
        for (b, r), c in sorted(moves.items(), key=lambda x: -x[1]):
            if b != r:
                print(f"  {b:<48} -> {r:<48}{c:>4}")
        print(f"  unchanged: {sum(c for (b, r), c in moves.items() if b == r)} of {total}")
    out = FLAGS.out or os.path.join(
        "benchmarks", "results", f"failures_{os.path.basename(os.path.normpath(FLAGS.run))}.json"
    )
    write_results(
        out,
        {
            "machine": machine_info(),
            "run": os.path.relpath(FLAGS.run),
            "task": name,
            "env_steps": prog["env_steps"],
            "episodes_per_seed": n,
            "rows": rows,
            "transitions": [{"base": b, "resfit": r, "episodes": c} for (b, r), c in moves.items()],
        },
    )


if __name__ == "__main__":
    app.run(main)
