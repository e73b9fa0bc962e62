r"""Is the critic right about its actor's corrections? Predicted against measured, decision by
decision, on a semi-MDP residual run (``--recipe=chunk``).

    python -m studies.calibration --run=runs/probes/bimanual_chunk --episodes=200

For one seed's policy pi (its kept state, or ``--state=last``) on the first --episodes of
its held-out starts: pi's episodes are recorded with what its learner saw at every decision
point, and for every decision d the same episodes are run again with the correction of
window d replaced by the base's own plan (``resfit_jax.sim.calibration``). The env and the
policy are deterministic, so the two episodes agree up to decision d and the difference of
their discounted returns from there is what the correction did. The critic's prediction
for the same decision is Q(s, a_b + r) - Q(s, a_b). The table, per decision and pooled over
all (episode, decision) pairs alive at the decision: the mean predicted and measured
advantage (95% interval), how many episodes the correction won (pi succeeds, the masked
episode fails) and lost, the correlation of predicted and measured, the measured effect in
thirds of the prediction, and Q's own calibration (mean predicted Q(s, a_b + r) against the
measured return from the decision). Writes --results (default benchmarks/results/
calibration_<run name>.json) with the machine description.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The script's flags (defined only when it runs, so importing it defines none)."""
    flags.DEFINE_string("run", None, "A finished or stopped semi-MDP residual run directory.")
    flags.DEFINE_enum("state", "kept", ["kept", "last"], "Which learner state to measure.")
    flags.DEFINE_integer("seed_index", 0, "Which of the run's seeds (index into its seeds).")
    flags.DEFINE_integer("episodes", 200, "Held-out starts to measure on (the first N).")
    flags.DEFINE_string("results", None, "JSON path (default benchmarks/results/calibration_*).")


def _interval(x: np.ndarray) -> list[float]:
    """Normal 95% interval of the mean of x."""
    if x.size < 2:
        return [float("nan")] * 2
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    return [float(x.mean() - half), float(x.mean() + half)]


def calibration_table(pred: dict, pi: dict, masked: list[dict], every: int) -> dict:
    """Host side. pred: ``predicted_advantage``'s arrays ([K, D, N] / [D, N]); pi: pi's
    episodes (success [N], length [N], return_to_go [T, N]); masked[d]: the episodes with
    window d masked (same keys). Returns per-decision rows, the pooled row, thirds of the
    prediction and Q's calibration, over the pairs alive at each decision."""
    from resfit_jax.run.stats import mcnemar_exact

    length, ok = np.asarray(pi["length"]), np.asarray(pi["success"], bool)
    adv = np.asarray(pred["advantage"])  # [K, D, N]
    rows, all_pred, all_meas, all_q, all_g = [], [], [], [], []
    won = lost = 0
    for d, alt in enumerate(masked):
        t = d * every
        alive = length > t
        if not alive.any():
            continue
        g_pi = np.asarray(pi["return_to_go"])[t][alive]
        g_alt = np.asarray(alt["return_to_go"])[t][alive]
        p = adv[:, d, alive].mean(0)
        m = g_pi - g_alt
        ok_alt = np.asarray(alt["success"], bool)[alive]
        w, lo = int((ok[alive] & ~ok_alt).sum()), int((~ok[alive] & ok_alt).sum())
        won, lost = won + w, lost + lo
        rows.append(
            {
                "decision": d,
                "env_step": t,
                "alive": int(alive.sum()),
                "predicted": float(p.mean()),
                "heads_spread": float(adv[:, d, alive].std(0).mean()),
                "measured": float(m.mean()),
                "measured_interval": _interval(m),
                "won": w,
                "lost": lo,
                "residual_size": float(np.asarray(pred["size"])[d, alive].mean()),
                "q": float(np.asarray(pred["q"])[d, alive].mean()),
                "return": float(g_pi.mean()),
            }
        )
        all_pred.append(p)
        all_meas.append(m)
        all_q.append(np.asarray(pred["q"])[d, alive])
        all_g.append(g_pi)
    p, m = np.concatenate(all_pred), np.concatenate(all_meas)
    q, g = np.concatenate(all_q), np.concatenate(all_g)
    cuts = np.quantile(p, [1 / 3, 2 / 3])
    bins = np.digitize(p, cuts)
    thirds = [
        {
            "predicted": float(p[bins == b].mean()),
            "measured": float(m[bins == b].mean()),
            "measured_interval": _interval(m[bins == b]),
            "pairs": int((bins == b).sum()),
        }
        for b in range(3)
        if (bins == b).any()
    ]
    corr = float(np.corrcoef(p, m)[0, 1]) if p.std() > 0 and m.std() > 0 else float("nan")
    pooled = {
        "pairs": int(p.size),
        "predicted": float(p.mean()),
        "measured": float(m.mean()),
        "measured_interval": _interval(m),
        "won": won,
        "lost": lost,
        "p_value": float(mcnemar_exact(won, lost)),
        "correlation": corr,
        "sign_agreement": float(np.mean(np.sign(p[m != 0]) == np.sign(m[m != 0])))
        if (m != 0).any()
        else float("nan"),
        "q": float(q.mean()),
        "return": float(g.mean()),
    }
    return {"decisions": rows, "pooled": pooled, "thirds": thirds}


def measure(run: str, state: str, seed_index: int, episodes: int) -> dict:
    """Reopen ``run`` and measure its critic's calibration (see the module docstring)."""
    import jax

    from resfit_jax.sim import calibration as cal
    from resfit_jax.sim.evaluation import episode_keys
    from resfit_jax.sim.restore import open_trained_run

    trained = open_trained_run(run, state=state)
    if not 0 <= seed_index < len(trained.seeds):
        raise ValueError(
            f"--seed_index={seed_index}: {run} has {len(trained.seeds)} seeds "
            f"(indices 0..{len(trained.seeds) - 1})."
        )
    cfg, trainer = trained.cfg, trained.trainer
    if episodes > cfg.num_final_episodes:
        raise ValueError(
            f"--episodes={episodes}: the run has {cfg.num_final_episodes} held-out starts."
        )
    policy = trained.policy(seed_index)
    every = cal.check_semi_mdp(policy)
    lstate = jax.tree.map(lambda x: x[seed_index], trained.learner_state)
    keys = episode_keys(trainer.evaluator.final_keys()[seed_index], episodes)
    task, gamma = trainer.task, float(cfg.replay.gamma)
    pi = jax.device_get(
        jax.jit(lambda k: cal.record_decisions(task, policy, k, every, gamma))(keys)
    )
    pred = jax.device_get(
        jax.jit(lambda o, b: cal.predicted_advantage(trainer.loop.learner, lstate, o, b))(
            pi["obs"], pi["base_action"]
        )
    )
    masked_fn = jax.jit(lambda k, d: cal.run_without_window(task, policy, k, every, d, gamma))
    masked = []
    decisions = cal.num_decisions(task, every)
    for d in range(decisions):
        alive = int((pi["length"] > d * every).sum())
        print(f"decision {d + 1}/{decisions} (env step {d * every}): {alive} episodes alive")
        masked.append(jax.device_get(masked_fn(keys, d)) if alive else pi)
    table = calibration_table(pred, pi, masked, every)
    return {
        "run": os.path.relpath(os.path.abspath(run)),
        "task": trained.info["task"],
        "state": state,
        "state_env_steps": trained.progress.get("state_env_steps")
        or trained.progress.get("env_steps"),
        "seed": trained.seeds[seed_index],
        "episodes": episodes,
        "every": every,
        "gamma": gamma,
        "success": float(np.mean(pi["success"])),
    } | table


def print_table(res: dict) -> None:
    print(
        f"\n{res['task']} {res['run']} ({res['state']} state at {res['state_env_steps']} env "
        f"steps, seed {res['seed']}): pi succeeds on {res['success']:.1%} of "
        f"{res['episodes']} held-out starts"
    )
    head = (
        "| decision (env step) | alive | predicted | heads spread | measured [95%] | won / lost "
        "| |r| | Q / return |"
    )
    print(head + "\n|" + "---|" * 8)
    for r in res["decisions"]:
        lo, hi = r["measured_interval"]
        print(
            f"| {r['decision']} ({r['env_step']}) | {r['alive']} | {r['predicted']:+.4f} | "
            f"{r['heads_spread']:.4f} | {r['measured']:+.4f} [{lo:+.3f}, {hi:+.3f}] | "
            f"{r['won']} / {r['lost']} | {r['residual_size']:.4f} | "
            f"{r['q']:.3f} / {r['return']:.3f} |"
        )
    p = res["pooled"]
    lo, hi = p["measured_interval"]
    print(
        f"\npooled over {p['pairs']} (episode, decision) pairs: predicted {p['predicted']:+.4f}, "
        f"measured {p['measured']:+.4f} [{lo:+.4f}, {hi:+.4f}]; corrections won {p['won']} / "
        f"lost {p['lost']} episodes (p {p['p_value']:.2g}); correlation {p['correlation']:+.3f}, "
        f"sign agreement {p['sign_agreement']:.2f} where the effect is not zero; "
        f"Q {p['q']:.3f} against the measured return {p['return']:.3f}"
    )
    print(
        "by thirds of the prediction: "
        + "; ".join(
            f"predicted {t['predicted']:+.4f} -> measured {t['measured']:+.4f} ({t['pairs']} pairs)"
            for t in res["thirds"]
        )
    )


def main(argv):
    del argv
    from resfit_jax.run.configs import usage_error
    from resfit_jax.run.machine import machine_info, write_results
    from resfit_jax.run.runtime import setup_script

    setup_script()
    if not FLAGS.run:
        usage_error("--run is required: a semi-MDP residual run directory (--recipe=chunk).")
    try:
        res = measure(FLAGS.run, FLAGS.state, FLAGS.seed_index, FLAGS.episodes)
    except (FileNotFoundError, ValueError) as e:
        usage_error(str(e))
    print_table(res)
    name = os.path.basename(os.path.normpath(FLAGS.run))
    path = FLAGS.results or os.path.join("benchmarks", "results", f"calibration_{name}.json")
    write_results(path, res | {"machine": machine_info()})


if __name__ == "__main__":
    define_flags()
    app.run(main)
