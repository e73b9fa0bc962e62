"""Why episodes fail: the outcome of every evaluation episode of a residual run, for its base
and for its residual policy, on the run's own matched starts.

    python -m studies.failure_modes --run=runs/residual/PickPlace

Reads the run's config.json (task, base, demos, preset and overrides), restores its latest
checkpoint, replays the evaluation with observations recorded, and sorts every episode into
an outcome from its observation trajectory (``OUTCOMES`` per task). By default it replays
the policy the run reports (``--state=kept``: each seed's kept state under
``select.rule="best"``, else the last) on the held-out starts of the final evaluation
(``--starts=held_out``), and checks that the replayed successes are the ones the run's
summary.json recorded, episode by episode. Prints one table per
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
flags.DEFINE_enum(
    "state",
    "kept",
    ["kept", "last"],
    "Residual policy: the state the run kept and reports (select.rule=best), or the last one.",
)
flags.DEFINE_enum(
    "starts",
    "held_out",
    ["held_out", "periodic"],
    "Starts: the final evaluation's held-out ones, or the periodic evaluations' ones.",
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


def _bimanual(obs: np.ndarray, success: bool) -> str:
    """obs [L, 47] of one episode (see envs/bimanual_handover.py for the layout): right tcp
    13:16, left tcp 29:32, bar 32:35, tote centre 45:47. A hand holds the bar when its tcp is
    within the expert's hold distance of the bar centre and the bar is off the table."""
    from resfit_jax.envs.bimanual_handover import BAR_HALF, GRASP_OFFSET, TOTE_INNER_HALF

    if success:
        return "success"
    bar, tcp_r, tcp_l, tote = obs[:, 32:35], obs[:, 13:16], obs[:, 29:32], obs[-1, 45:47]
    up = bar[:, 2] > BAR_HALF[2] + 0.005
    near = GRASP_OFFSET + 0.03
    held_r = up & (np.linalg.norm(bar - tcp_r, axis=1) < near)
    held_l = up & (np.linalg.norm(bar - tcp_l, axis=1) < near)
    if bar[:, 2].max() < BAR_HALF[2] + LIFT:
        reached = np.linalg.norm(bar - tcp_r, axis=1).min() < near
        return (
            "grasp failed (the right arm reached the bar, never lifted)"
            if reached
            else "never reached the bar (right arm)"
        )
    inside = np.all(np.abs(bar[-1, :2] - tote) < TOTE_INNER_HALF)
    if not held_l.any():
        if held_r[-1]:
            return "no handover: right holds the bar at the time limit"
        return "dropped before the handover"
    if held_l[-1]:
        return (
            "left holds the bar over the tote at the time limit"
            if inside
            else "left holds the bar away from the tote at the time limit"
        )
    if inside:
        return "released over the tote, not resting (on a wall)"
    return "dropped after the handover, outside the tote"


OUTCOMES = {"PickPlace": _pickplace, "PegInsertion": _peg, "BimanualHandover": _bimanual}
# obs slices of (tool centre point, object centre) per task, for the closest approach
TOOL_AND_OBJECT = {
    "PickPlace": (slice(13, 16), slice(16, 19)),
    "PegInsertion": (slice(13, 16), slice(16, 19)),
    "BimanualHandover": (slice(13, 16), slice(32, 35)),  # the right (picking) arm and the bar
}


def _layout_task(task: str) -> str:
    """The delta end-effector variants (PickPlaceEE, ...) observe what their joint task does."""
    return task.removesuffix("EE") if task.removesuffix("EE") in OUTCOMES else task


def classify(task: str, obs: np.ndarray, success: np.ndarray, length: np.ndarray) -> list[str]:
    """Outcome of each episode; obs [T, N, D] from sim.evaluation.run_episodes(record=True)."""
    task = _layout_task(task)
    if task not in OUTCOMES:
        raise ValueError(f"No outcome classifier for task {task!r}; known: {sorted(OUTCOMES)}.")
    fn = OUTCOMES[task]
    return [fn(obs[: max(int(length[i]), 1), i], bool(success[i])) for i in range(len(success))]


def closest_approach(task: str, obs: np.ndarray, length: np.ndarray) -> np.ndarray:
    """[N] metres: the smallest tool-to-object distance over each episode (obs [T, N, D]),
    how far a missed grasp was from the object."""
    task = _layout_task(task)
    if task not in TOOL_AND_OBJECT:
        raise ValueError(
            f"No tool / object layout for task {task!r}; known: {sorted(TOOL_AND_OBJECT)}."
        )
    tool, obj = TOOL_AND_OBJECT[task]
    dist = np.linalg.norm(obs[..., tool] - obs[..., obj], axis=-1)  # [T, N]
    live = np.arange(obs.shape[0])[:, None] < np.maximum(length, 1)[None, :]
    return np.where(live, dist, np.inf).min(axis=0)


def misses(labels: dict, closest: dict) -> dict:
    """The episodes that never reached the object: per policy their count and closest
    approach (cm: 10th, 50th, 90th percentile), and, over the episodes both policies missed,
    how much closer the residual brought the tool (cm, median and mean of base - resfit)."""
    out = {}
    for who, lab in labels.items():
        d = np.asarray([c for c, k in zip(closest[who], lab) if k.startswith("never reached")])
        q = np.percentile(d, [10, 50, 90]) * 100 if d.size else [np.nan] * 3
        out[who] = {
            "episodes": int(d.size),
            "closest_cm_p10_p50_p90": [round(float(x), 2) for x in q],
        }
    if "resfit" in labels:
        both = [
            i
            for i, (b, r) in enumerate(zip(labels["base"], labels["resfit"]))
            if b.startswith("never reached") and r.startswith("never reached")
        ]
        gain = (np.asarray(closest["base"])[both] - np.asarray(closest["resfit"])[both]) * 100
        out["both_missed"] = {
            "episodes": len(both),
            "closer_cm_median": round(float(np.median(gain)), 2) if both else None,
            "closer_cm_mean": round(float(np.mean(gain)), 2) if both else None,
        }
    return out


def _rollouts(
    run: str, base_only: bool, state: str = "kept", starts: str = "held_out"
) -> tuple[dict, dict, dict]:
    """Rebuild the run's trainer; recorded evaluations of the base and (unless base_only) the
    residual policy of the latest checkpoint (its kept or last learner states) on the run's
    held-out or periodic starts."""
    import jax

    from resfit_jax.sim.evaluation import episode_keys, run_episodes
    from resfit_jax.sim.restore import open_trained_run

    trained = open_trained_run(run, base_only, state)
    info, cfg, trainer, prog = trained.info, trained.cfg, trained.trainer, trained.progress
    learner_state, normalizer = trained.learner_state, trained.normalizer(0)
    ev = trainer.evaluator
    n, keys = (
        (cfg.num_final_episodes, ev.final_keys())
        if starts == "held_out"
        else (cfg.eval_episodes, ev.eval_keys())
    )

    def evaluate(lstate, key, nz):
        policy = trained.make_policy(lstate, nz)
        return run_episodes(trainer.task, policy, episode_keys(key, n), record=True)

    results = {
        "base": jax.device_get(jax.jit(jax.vmap(lambda key: evaluate(None, key, normalizer)))(keys))
    }
    if not base_only:
        results["resfit"] = jax.device_get(
            jax.jit(jax.vmap(lambda lstate, key: evaluate(lstate, key, lstate.normalizer)))(
                learner_state, keys
            )
        )
    return info, prog, results


def check_against_summary(run: str, results: dict) -> None:
    """The replayed held-out successes must be the ones the run recorded in summary.json
    (``final.per_seed`` / ``final.base_per_seed`` outcome strings), episode by episode;
    raises ValueError naming the seed and the count otherwise (another jax / XLA version,
    or a checkpoint that is not the one the summary scored). A run without them passes."""
    path = os.path.join(run, "summary.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        final = json.load(f).get("final") or {}
    recorded = {"resfit": final.get("per_seed"), "base": final.get("base_per_seed")}
    for who, r in results.items():
        for i, row in enumerate(recorded.get(who) or []):
            if "outcomes" not in row:
                continue
            want = np.array([c == "1" for c in row["outcomes"]])
            got = np.asarray(r["success"][i], bool)
            if want.shape != got.shape or (want != got).any():
                diff = int((want != got).sum()) if want.shape == got.shape else "all"
                raise ValueError(
                    f"{who} seed index {i}: the replayed held-out successes differ from "
                    f"{path} in {diff} episodes; this replay does not reproduce the run "
                    "(another jax version, or a checkpoint other than the one it scored). "
                    "Use --starts=periodic for a fresh look instead."
                )
    print(f"replayed held-out outcomes of {' and '.join(results)} match {path}, episode by episode")


def main(argv):
    del argv
    from resfit_jax.run.machine import machine_info, write_results
    from resfit_jax.run.runtime import setup_script

    setup_script()
    from resfit_jax.run.configs import usage_error

    try:
        info, prog, results = _rollouts(FLAGS.run, FLAGS.base_only, FLAGS.state, FLAGS.starts)
        if FLAGS.starts == "held_out":  # the last state was not the one the summary scored
            check_against_summary(
                FLAGS.run,
                {k: v for k, v in results.items() if k == "base" or FLAGS.state == "kept"},
            )
    except (FileNotFoundError, ValueError) as e:
        usage_error(str(e))
    name, seeds, policies = info["task"], info["seeds"], list(results)
    n = int(results["base"]["success"].shape[1])
    rows, totals, moves = [], collections.Counter(), collections.Counter()
    all_labels = {who: [] for who in policies}
    all_closest = {who: [] for who in policies}
    for i, seed in enumerate(seeds):
        labels = {
            who: classify(name, r["obs"][i], r["success"][i], r["length"][i])
            for who, r in results.items()
        }
        for who, r in results.items():
            all_labels[who] += labels[who]
            all_closest[who] += list(closest_approach(name, r["obs"][i], r["length"][i]))
        for who, lab in labels.items():
            for k, c in collections.Counter(lab).items():
                rows.append({"seed": seed, "policy": who, "outcome": k, "episodes": c})
                totals[(who, k)] += c
        if "resfit" in labels:
            moves.update(zip(labels["base"], labels["resfit"]))

    total = n * len(seeds)
    at = prog.get("state_env_steps") or prog["env_steps"]
    print(
        f"{name}: {FLAGS.run}, {FLAGS.state} policy at {at} main-loop env steps; "
        f"{n} matched {FLAGS.starts.replace('_', '-')} episodes per seed, seeds {seeds}"
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
    missed = misses(all_labels, all_closest)
    print("\nnever reached the object: closest tool-object approach (cm, 10th / 50th / 90th pct)")
    for who in policies:
        m = missed[who]
        print(
            f"  {who:<8}{m['episodes']:>5} episodes   "
            + " / ".join(f"{x:.1f}" for x in m["closest_cm_p10_p50_p90"])
        )
    if "both_missed" in missed and missed["both_missed"]["episodes"]:
        m = missed["both_missed"]
        print(
            f"  missed by both ({m['episodes']} episodes): the residual's tool came "
            f"{m['closer_cm_median']:.2f} cm closer (median; mean {m['closer_cm_mean']:.2f})"
        )
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
            "state": FLAGS.state,
            "state_env_steps": prog.get("state_env_steps"),
            "starts": FLAGS.starts,
            "episodes_per_seed": n,
            "rows": rows,
            "transitions": [{"base": b, "resfit": r, "episodes": c} for (b, r), c in moves.items()],
            "misses": missed,
        },
    )


if __name__ == "__main__":
    app.run(main)
