r"""Ablation runner: train the same task and base under several settings (seeds vmapped per
setting) and compare them on held-out starts.

    python -m studies.ablate --task=PickPlace --base=runs/bc/PickPlace --seeds=3 \
        --factor=residual.base_phase=false,true --factor=obs_min_std=0.1,0.001 --out=runs/ablate/pp
    python -m studies.ablate ... --setting="old:obs_min_std=0.1" \
        --setting="new:residual.base_phase=true;warmup_env_steps=10240"
    python -m studies.ablate ... --setting="per_step:" --setting="chunk:recipe=chunk" \
        --setting="chunk_no_mc:recipe=chunk;residual.mc_bound=false"

    python -m studies.ablate --task=PointReach --base=scripted --paper_ablations

``--paper_ablations`` adds the paper's design ablations as named settings (``PAPER_ABLATIONS``:
the preset, LayerNorm off, no demos, critic steps per env step 1/2, 1, 4 and 8 at the
preset's env count, n = 1, 3, 5, 10, K = 2 and 5 heads, warm-up phases off).
Each ``--factor=FIELD=V1,V2,...`` is one config field and its values; settings are their
cartesian product. Each ``--setting=NAME:OVERRIDE;OVERRIDE`` adds one named setting;
``recipe=chunk`` in either stands for that recipe's overrides (``sim.presets.RECIPES``). Common
``--config.*`` values apply to every setting. Every setting trains in
<out>/<name>, cheapest first (``update_cost``: UTD 8 last), so a runner stopped part-way has
measured the most settings (re-running resumes unfinished settings and skips finished ones;
``--analyze_only`` trains nothing and reports the finished ones), then a table of
the held-out final evaluation per setting is printed and written to <out>/ablation.json:
base and final success (pooled over seeds), fixed / broken, churn, gain, the exact McNemar
p-value against the base, the interval of the difference, mean steps of successes. A second
table compares every setting with ``--reference`` (default: the first setting; the preset
with ``--paper_ablations``) on the same held-out starts, episode by episode: fixed / broken
against the reference, p-value and the interval of setting - reference (``vs_reference``).
A setting whose config equals an earlier one's (``nstep_3`` when the preset's n is 3) reuses
that run. With ``--paper_ablations`` the paper's claims (``PAPER_CLAIMS``: UTD 4 beats 1/2
and 1, 8 adds little, n > 1 is necessary, n = 10 no better than 3 or 5, LayerNorm, demos and
the warm-up phases matter) are checked on the held-out episodes and printed with a verdict
(``paper_claims`` in ablation.json). ``--rescore`` re-runs the held-out evaluation of
finished settings recorded before each episode's outcome was kept, so they can be paired.
"""

from __future__ import annotations

import itertools
import json
import os

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The script's flags (defined only when it runs, so importing it defines none)."""
    flags.DEFINE_string("task", "PickPlace", "Registered task name.")
    flags.DEFINE_string(
        "base",
        None,
        "BC base: train_bc run / checkpoint / export directory "
        "(default runs/bc/<task>); 'scripted' on PointReach: the biased "
        "scripted base with 60 expert demos.",
    )
    flags.DEFINE_string("demos", None, "RLDS demos for the offline buffer (default: the base's).")
    flags.DEFINE_enum("scale", "cpu", ["cpu", "paper"], "Preset scale.")
    flags.DEFINE_enum(
        "method",
        "resfit",
        ["resfit", "rlpd", "ibrl"],
        "Learner of every setting: resfit or a baseline's recipe (resfit-train --method).",
    )
    flags.DEFINE_multi_string("factor", [], "FIELD=V1,V2,...: one factor and its values.")
    flags.DEFINE_multi_string("setting", [], "NAME:OVERRIDE;OVERRIDE: one named setting.")
    flags.DEFINE_integer("seeds", 3, "Seeds per setting, vmapped.")
    flags.DEFINE_bool("paper_ablations", False, "Add the paper's design ablations as settings.")
    flags.DEFINE_string("out", None, "Output directory (default runs/ablate/<task>).")
    flags.DEFINE_bool(
        "rescore",
        False,
        "Re-run the held-out final evaluation of finished "
        "settings recorded before per-episode outcomes were kept.",
    )
    flags.DEFINE_string(
        "reference",
        None,
        "Setting every other one is compared with, episode "
        "by episode on the same held-out starts (default: the first).",
    )
    flags.DEFINE_bool(
        "analyze_only",
        False,
        "Train nothing: report the finished settings (the others are listed as unfinished).",
    )


def paper_ablations(num_envs: int, updates_per_step: int = 1) -> list[str]:
    """The paper's ablations as --setting strings for a preset with ``num_envs`` envs (UTD is
    set as critic steps per env step: replay.utd = x * num_envs / updates_per_step)."""
    utd = lambda x: max(1, round(x * num_envs / updates_per_step))
    return [
        "preset:",
        "layernorm_off:learner.layer_norm=false",
        "no_demos:replay.offline_fraction=0.0",
        *(f"utd_{x:g}:replay.utd={utd(x)}" for x in (0.5, 1, 4, 8)),
        *(f"nstep_{n}:replay.n_step={n}" for n in (1, 3, 5, 10)),
        "heads_2:learner.num_critics=2",
        "heads_5:learner.num_critics=5",
        "warmup_off:warmup_env_steps=0;critic_warmup_updates=0",
    ]


# The paper's qualitative claims about its ablations, as (claim, better, worse, kind) over
# the settings of ``paper_ablations``: "better" means the better setting's held-out success
# exceeds the worse one's (interval of the paired difference above 0); "no_gain" means the
# first does not beat the second (interval not above 0).
PAPER_CLAIMS = (
    ("UTD 4 beats UTD 1/2", "utd_4", "utd_0.5", "better"),
    ("UTD 4 beats UTD 1", "utd_4", "utd_1", "better"),
    ("UTD 8 adds little over UTD 4", "utd_8", "utd_4", "no_gain"),
    ("n-step > 1 is necessary (n = 3 beats n = 1)", "nstep_3", "nstep_1", "better"),
    ("n = 10 is no better than n = 3", "nstep_10", "nstep_3", "no_gain"),
    ("n = 10 is no better than n = 5", "nstep_10", "nstep_5", "no_gain"),
    ("LayerNorm matters", "preset", "layernorm_off", "better"),
    ("demos matter", "preset", "no_demos", "better"),
    ("the warm-up phases matter", "preset", "warmup_off", "better"),
)


def paper_claims(summaries: dict[str, dict]) -> list[dict]:
    """Each of ``PAPER_CLAIMS`` checked on the held-out episodes (``summaries``: setting name
    -> summary.json): the paired comparison of the two settings (``report.paired_between``,
    reference = the claim's second setting) and a verdict: "supported", "not supported"
    (the interval of the difference includes 0), "contradicted" (significant the other way),
    or "not measured" (a setting missing or without outcomes)."""
    from resfit_jax.sim.report import paired_between

    out = []
    for claim, first, second, kind in PAPER_CLAIMS:
        row = {"claim": claim, "setting": first, "against": second, "kind": kind}
        try:
            v = paired_between(summaries[second], summaries[first])
        except (KeyError, ValueError) as e:
            out.append(row | {"verdict": "not measured", "why": str(e)})
            continue
        lo, hi = v["diff_ci_low"], v["diff_ci_high"]
        if kind == "better":
            verdict = "supported" if lo > 0 else "contradicted" if hi < 0 else "not supported"
        else:
            verdict = "contradicted" if lo > 0 else "supported"
        out.append(row | v | {"verdict": verdict})
    return out


def claims_table(claims: list[dict]) -> str:
    from resfit_jax.sim.report import paired_cells, paired_header

    lines = [f"{'claim':<46}{paired_header('against', 'setting')}  verdict"]
    for c in claims:
        blank = " " * (len(paired_header("", "")) - 22)  # the cells after the names
        cells = (
            f"{c['against']:>11}{c['setting']:>11}{blank}"
            if c["verdict"] == "not measured"
            else paired_cells(c)
        )
        lines.append(f"{c['claim'][:45]:<46}{cells}  {c['verdict']}")
    return "\n".join(lines)


def update_cost(cfg) -> float:
    """A run's critic-head updates (critic steps per env step x env steps x heads): what a
    setting's training time grows with on the CPU (UTD 8 costs 32x the preset's UTD 1/4)."""
    return cfg.critic_steps_per_env_step * cfg.total_env_steps * cfg.learner.num_critics


def training_order(configs: list) -> list[int]:
    """Indices of ``configs`` cheapest first (``update_cost``; declared order among equals),
    so a runner stopped part-way has measured as many settings as it could."""
    return sorted(range(len(configs)), key=lambda i: update_cost(configs[i]))


def declared_rows(
    names: list[str], overrides: list[list[str]], same: dict[int, int], summaries: dict[int, dict]
) -> tuple[list[dict], list[dict], list[str]]:
    """Rows and summaries of the finished settings in declared order (a setting equal to an
    earlier one shares its summary), and the names of the unfinished ones."""
    rows, kept, unfinished = [], [], []
    for i, name in enumerate(names):
        summary = summaries.get(same.get(i, i))
        if summary is None:
            unfinished.append(name)
            continue
        rows.append(row(name, overrides[i], summary))
        kept.append(summary)
    return rows, kept, unfinished


def same_as_earlier(configs: list) -> dict[int, int]:
    """{i: j}: setting i's config equals the earlier setting j's (the first such), so i
    reuses j's run instead of training the same thing twice."""
    from resfit_jax.run.configs import to_dict

    first: dict[str, int] = {}
    out = {}
    for i, cfg in enumerate(configs):
        key = json.dumps(to_dict(cfg), sort_keys=True)
        if key in first:
            out[i] = first[key]
        else:
            first[key] = i
    return out


def settings(factors: list[str], named: list[str]) -> list[tuple[str, list[str]]]:
    """[(name, overrides)]: the cartesian product of the factors, then the named settings."""
    out = []
    axes = []
    for f in factors:
        field, sep, values = f.partition("=")
        if not sep or not values:
            raise ValueError(f"--factor={f!r}: expected FIELD=V1,V2,...")
        axes.append([(field.strip(), v.strip()) for v in values.split(",")])
    if axes:
        for combo in itertools.product(*axes):
            name = ",".join(f"{k.split('.')[-1]}={v}" for k, v in combo)
            out.append((name, [f"{k}={v}" for k, v in combo]))
    for s in named:
        name, sep, rest = s.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--setting={s!r}: expected NAME:OVERRIDE;OVERRIDE")
        out.append((name.strip(), [o.strip() for o in rest.split(";") if o.strip()]))
    if not out:
        raise ValueError("Give at least one --factor or --setting.")
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"Setting names repeat: {names}.")
    return [(name, expand_recipes(overrides)) for name, overrides in out]


def expand_recipes(overrides: list[str]) -> list[str]:
    """``recipe=NAME`` (a factor value or a setting's override) becomes that recipe's
    overrides (``sim.presets.RECIPES``) in its place, so later overrides change it."""
    from resfit_jax.sim.presets import RECIPES

    out = []
    for o in overrides:
        field, _, value = o.partition("=")
        if field.strip() != "recipe":
            out.append(o)
        elif value.strip() in RECIPES:
            out += list(RECIPES[value.strip()])
        else:
            raise ValueError(f"{o!r}: unknown recipe; choose one of {sorted(RECIPES)}.")
    return out


def row(name: str, overrides: list[str], summary: dict) -> dict:
    p = summary["final"]["pooled"]
    return {
        "setting": name,
        "overrides": overrides,
        "seeds": summary["seeds"],
        "env_steps": summary["env_steps"],
        "episodes": p["episodes"],
        "base_success_rate": p["base_success_rate"],
        "success_rate": p["success_rate"],
        "fixed": p["fixed"],
        "broken": p["broken"],
        "gain": p["gain"],
        "churn": p["churn"],
        "p_value": p["p_value"],
        "diff_ci_low": p["diff_ci_low"],
        "diff_ci_high": p["diff_ci_high"],
        "base_mean_success_length": p["base_mean_success_length"],
        "mean_success_length": p["mean_success_length"],
        "per_seed_success": [r["success_rate"] for r in summary["final"]["per_seed"]],
        "wall_s": summary["wall_s"],
    }


def against_reference(rows: list[dict], summaries: list[dict], reference: str) -> None:
    """Set each row's ``vs_reference``: the paired comparison with the reference setting's
    held-out episodes (``report.paired_between``); None for the reference itself and for
    runs without stored outcomes (a note is printed)."""
    from resfit_jax.sim.report import paired_between

    names = [r["setting"] for r in rows]
    if reference not in names:
        raise ValueError(f"--reference={reference!r} is not a setting; settings: {names}.")
    ref = summaries[names.index(reference)]
    for r, s in zip(rows, summaries):
        r["vs_reference"] = None
        if r["setting"] == reference:
            continue
        try:
            r["vs_reference"] = {"reference": reference, **paired_between(ref, s)}
        except ValueError as e:
            print(f"{r['setting']}: not compared with {reference} ({e})")


def reference_table(rows: list[dict], reference: str) -> str:
    from resfit_jax.sim.report import paired_cells, paired_header

    lines = [f"{'setting':<34}{paired_header(reference, 'setting')}"]
    lines += [
        f"{r['setting'][:33]:<34}{paired_cells(r['vs_reference'])}"
        for r in rows
        if r.get("vs_reference") is not None
    ]
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    fmt = lambda x: "-" if x is None else f"{x:.1f}"
    lines = [
        f"{'setting':<34}{'BC':>7}{'final':>8}{'fixed':>7}{'broken':>8}{'churn':>7}"
        f"{'gain':>7}{'p':>9}{'diff 95% CI':>17}{'steps':>13}"
    ]
    for r in rows:
        lines.append(
            f"{r['setting'][:33]:<34}{r['base_success_rate']:>7.1%}"
            f"{r['success_rate']:>8.1%}{r['fixed']:>7}{r['broken']:>8}{r['churn']:>7.1%}"
            f"{r['gain']:>7.1%}{r['p_value']:>9.2g}"
            f"{f'[{r["diff_ci_low"]:+.2f}, {r["diff_ci_high"]:+.2f}]':>17}"
            f"{fmt(r['base_mean_success_length']) + ' -> ' + fmt(r['mean_success_length']):>13}"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    from resfit_jax.run.runtime import setup_script

    setup_script()
    from resfit_jax.run.configs import config_overrides, resolve, usage_error
    from resfit_jax.run.logger import read_metrics
    from resfit_jax.sim.presets import preset
    from resfit_jax.sim.report import held_out_outcomes, mechanism_numbers, mechanism_table
    from resfit_jax.sim.runs import open_inputs
    from resfit_jax.sim.trainer import make_trainer, rescore_run, train_residual

    named = list(FLAGS.setting)
    if FLAGS.paper_ablations:
        p = preset(FLAGS.task, FLAGS.scale, FLAGS.method)
        named += paper_ablations(p.num_envs, p.updates_per_step)
    try:
        runs = settings(FLAGS.factor, named)
    except ValueError as e:
        usage_error(str(e))
    common = config_overrides()
    configs = [
        (name, ovs, resolve(lambda: preset(FLAGS.task, FLAGS.scale, FLAGS.method), common + ovs))
        for name, ovs in runs
    ]  # every setting validated before training
    try:
        task, base, episodes, identity, paths = open_inputs(FLAGS.task, FLAGS.base, FLAGS.demos)
    except (FileNotFoundError, ValueError) as e:
        usage_error(str(e))
    out = os.path.abspath(FLAGS.out or os.path.join("runs", "ablate", FLAGS.task))
    os.makedirs(out, exist_ok=True)
    reference = FLAGS.reference or configs[0][0]
    if reference not in [name for name, _, _ in configs]:
        usage_error(
            f"--reference={reference!r} is not a setting; settings: "
            f"{[name for name, _, _ in configs]}."
        )
    same = same_as_earlier([cfg for _, _, cfg in configs])
    summaries: dict[int, dict] = {}
    mechanisms: dict[int, dict] = {}  # action gap, TD error, head spread (report.mechanism_*)
    n = len(configs)
    for step, i in enumerate(training_order([cfg for _, _, cfg in configs])):
        name, ovs, cfg = configs[i]
        run_dir = os.path.join(out, name.replace("/", "_"))
        done = os.path.join(run_dir, "summary.json")
        if i in same:  # e.g. nstep_3 when the preset's n is 3
            print(
                f"[{step + 1}/{n}] {name}: the same config as {configs[same[i]][0]}, "
                "reusing its run"
            )
            continue
        if os.path.exists(done) and json.load(open(done)).get("complete"):
            print(f"[{step + 1}/{n}] {name}: done, reusing {run_dir}")
            summary = json.load(open(done))
            if FLAGS.rescore and held_out_outcomes(summary) is None:
                print(f"[{step + 1}/{n}] {name}: rescoring its held-out evaluation")
                trainer = make_trainer(task, base, episodes, cfg, list(range(FLAGS.seeds)))
                rescore_run(trainer, run_dir, task_name=FLAGS.task, identity=identity)
                summary = json.load(open(done))
        elif FLAGS.analyze_only:
            print(f"[{step + 1}/{n}] {name}: not finished")
            continue
        else:
            print(f"[{step + 1}/{n}] {name}: {' '.join(common + ovs) or 'preset'}")
            trainer = make_trainer(task, base, episodes, cfg, list(range(FLAGS.seeds)))
            resume = os.path.isdir(os.path.join(run_dir, "checkpoints"))
            summary = train_residual(
                trainer,
                run_dir,
                resume=resume,
                task_name=FLAGS.task,
                extra_info={
                    "base": paths["base"],
                    "demos": paths["demos"],
                    "scale": FLAGS.scale,
                    "method": FLAGS.method,
                    "overrides": common + ovs,
                },
                identity=identity,
            )
            summary = {
                k: v
                for k, v in summary.items()  # the JSON part, not the states
                if k not in ("loop_state", "selected_state")
            }
        summaries[i] = summary
        mechanisms[i] = mechanism_numbers(read_metrics(run_dir))
    rows, finished_summaries, unfinished = declared_rows(
        [name for name, _, _ in configs], [common + ovs for _, ovs, _ in configs], same, summaries
    )
    for r in rows:
        i = [name for name, _, _ in configs].index(r["setting"])
        r["mechanism"] = mechanisms.get(same.get(i, i), {})
    if reference in [r["setting"] for r in rows]:
        against_reference(rows, finished_summaries, reference)
    else:
        print(f"{reference}: not finished, so no setting is compared with it yet")
        for r in rows:
            r["vs_reference"] = None
    from resfit_jax.run.machine import machine_info

    base_name = paths["base"] if paths["base"] == "scripted" else os.path.relpath(paths["base"])
    result = {
        "task": FLAGS.task,
        "base": base_name,
        "scale": FLAGS.scale,
        "method": FLAGS.method,
        "seeds": FLAGS.seeds,
        "machine": machine_info(),
        "rows": rows,
        "unfinished": unfinished,
    }
    if FLAGS.paper_ablations:
        result["paper_claims"] = paper_claims(
            {r["setting"]: s for r, s in zip(rows, finished_summaries)}
        )
    with open(os.path.join(out, "ablation.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"\n{FLAGS.task}: held-out final evaluation, pooled over {FLAGS.seeds} seeds")
    print(table(rows))
    if any(r["mechanism"] for r in rows):
        print("\nThe critic's action gap against its TD error and head spread (main loop):")
        print(mechanism_table({r["setting"]: r["mechanism"] for r in rows}))
    if unfinished:
        print(f"not finished yet: {', '.join(unfinished)}")
    if any(r["vs_reference"] is not None for r in rows):
        print(
            f"\nAgainst {reference}, episode by episode on the same held-out starts "
            "(fixed: the reference fails and the setting succeeds)"
        )
        print(reference_table(rows, reference))
    if "paper_claims" in result:
        print(
            "\nThe paper's claims, on the same held-out starts (success of the setting and of "
            "the one it is compared with)"
        )
        print(claims_table(result["paper_claims"]))
    print(f"\nWrote {os.path.join(out, 'ablation.json')}")


if __name__ == "__main__":
    define_flags()
    from resfit_jax.run.configs import config_flag_parser

    app.run(main, flags_parser=config_flag_parser)
