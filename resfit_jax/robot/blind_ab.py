"""Blind A/B evaluation of two policies with matched initial conditions (the ResFiT paper's
real-robot protocol).

Per round: a scene id and an initial-condition note are shown for the reset; the two
policies are assigned to the labels A and B by a seeded coin flip that stays hidden; A runs
from the reset scene, then B from the same scene; the operator labels each episode knowing
only "A" or "B". Identities are revealed in the report, after the last round.

    journal = ABJournal(dir, names=("base", "resfit"), rounds=20, seed=0)
    run_ab(robot, {"base": p0, "resfit": p1}, labeller, limits, loop_cfg, journal)
    print(format_report(ab_report(journal)))

- Assignment: permuted blocks of ``block`` rounds (half of each block puts the first policy
  on A), so A and B are balanced over every completed block and never predictable from a
  running count. It is a function of the seed; no file the labeller sees holds it.
- Matched scenes: a robot with ``exact_scenes`` (the simulated robot) is reset to scene id
  ``i`` exactly (``robot.set_scene(i)`` before each reset); a real robot is reset by a person
  following the note (``scene_notes``, e.g. read from a file, one line per scene).
- Durability: each finished round is one JSON file written atomically (temporary file,
  fsync, rename), like the robot journal; the episodes are kept in ``<dir>/episodes`` (a
  robot ``Journal``, labelled with round and slot only). A crash loses at most the round in
  progress; a new ``run_ab`` on the same directory continues with the next round.
- Aborted episodes (the scene was wrong, someone intervened) are rerun from the same scene
  and counted in the round; an emergency stop ends the session after the episodes so far are
  journaled (the round in progress is not counted).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable, Sequence

import jax
import numpy as np

from resfit_jax.robot.journal import Journal, _fsync_dir
from resfit_jax.robot.loop import LoopConfig, Policy, RobotInterface, run_episode
from resfit_jax.robot.operator import Label, Labeller
from resfit_jax.robot.safety import EmergencyStop, SafetyLimits
from resfit_jax.run.stats import paired_outcomes, wilson_interval

SLOTS = ("A", "B")
_ROUND = re.compile(r"^round_(\d{6})\.json$")
_SETUP = "ab.json"


def assignments(seed: int, rounds: int, block: int = 4) -> np.ndarray:
    """bool [rounds]: True where the first policy runs as A. Permuted blocks: each block of
    ``block`` rounds (even) holds block / 2 of each, in an order drawn from ``seed``."""
    if block < 2 or block % 2:
        raise ValueError(f"the A/B block must be an even number >= 2, got {block}.")
    key = jax.random.key(seed)
    half = np.arange(block) < block // 2
    blocks = [
        half[np.asarray(jax.random.permutation(jax.random.fold_in(key, b), block))]
        for b in range(-(-rounds // block))
    ]
    return np.concatenate(blocks)[:rounds] if blocks else np.zeros(0, bool)


@dataclasses.dataclass(frozen=True)
class ABSetup:
    """What an A/B session compares: the two policies' names (the first is the reference),
    the number of rounds, the seed of the hidden assignment, its block size and ``state``,
    a note naming the policies' parameters (e.g. the learner checkpoint), which must match
    to continue a session."""

    names: tuple[str, str]
    rounds: int
    seed: int = 0
    block: int = 4
    state: str = ""

    def __post_init__(self):
        names = tuple(self.names)
        if len(names) != 2 or names[0] == names[1] or not all(names):
            raise ValueError(
                f"an A/B session compares two differently named policies, got {names}."
            )
        if self.rounds < 1:
            raise ValueError(f"an A/B session needs rounds >= 1, got {self.rounds}.")
        object.__setattr__(self, "names", names)
        assignments(self.seed, 0, self.block)  # checks the block

    def policy_on(self, round_: int, slot: str) -> str:
        """The name of the policy that runs as ``slot`` in round ``round_`` (the secret)."""
        first_is_a = bool(assignments(self.seed, round_ + 1, self.block)[round_])
        return self.names[(slot == "A") != first_is_a]


def write_json_atomic(path: str, value: dict) -> None:
    """Write ``value`` as JSON to ``path``: temporary file, fsync, rename, fsync the directory."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


class ABJournal:
    """The rounds of one A/B session on disk (see the module docstring). Opening an existing
    directory with another setup is refused (a session's rounds are only comparable under
    one assignment and one pair of policies), except for the number of rounds: the
    assignment of the first rounds does not depend on it, so a session can be extended."""

    def __init__(self, directory: str, setup: ABSetup):
        self.directory, self.setup = os.path.abspath(directory), setup
        os.makedirs(self.directory, exist_ok=True)
        for name in os.listdir(self.directory):  # a round being written when it crashed
            if ".json.tmp-" in name:
                os.remove(os.path.join(self.directory, name))
        path = os.path.join(self.directory, _SETUP)
        mine = dataclasses.asdict(setup) | {"names": list(setup.names)}
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            diff = sorted(k for k in mine if k != "rounds" and saved.get(k) != mine[k])
            if diff:
                raise ValueError(
                    f"{self.directory} holds an A/B session with another setup (it differs "
                    f"in {', '.join(diff)}: { ({k: saved.get(k) for k in diff}) } there, "
                    f"{ ({k: mine[k] for k in diff}) } now). Continue it with the same "
                    "policies, seed and block, or use another directory."
                )
        if not os.path.exists(path) or saved["rounds"] != setup.rounds:
            write_json_atomic(path, mine)
        self.episodes = Journal(os.path.join(self.directory, "episodes"))

    def rounds(self) -> list[dict]:
        """The finished rounds, in order (a gap would mean a damaged session: refused)."""
        out = []
        for name in sorted(os.listdir(self.directory)):
            if _ROUND.match(name):
                with open(os.path.join(self.directory, name)) as f:
                    out.append(json.load(f))
        for i, r in enumerate(out):
            if r.get("round") != i:
                raise ValueError(
                    f"{self.directory}: round files are not consecutive (expected round {i}, "
                    f"found {r.get('round')}); move the stray file away."
                )
        return out

    def write_round(self, row: dict) -> None:
        write_json_atomic(os.path.join(self.directory, f"round_{row['round']:06d}.json"), row)


def _episode_row(rec) -> dict:
    return {
        "label": rec.label.value,
        "success": rec.label == Label.SUCCESS,
        "reason": rec.reason,
        "steps": rec.steps,
        "wall_s": round(rec.wall_s, 3),
    }


def run_ab(
    robot: RobotInterface,
    policies: dict[str, Policy],
    labeller: Labeller,
    limits: SafetyLimits,
    loop: LoopConfig,
    journal: ABJournal,
    scene_notes: Sequence[str] = (),
    max_aborts: int = 3,
    progress: Callable[[str], None] = print,
) -> list[dict]:
    """Run the session's remaining rounds; returns every finished round (journal.rounds()).

    ``policies`` maps the setup's two names to policies (``robot.loop.Policy``);
    ``scene_notes[i % len]`` is shown for scene i (default: the scene id only, or "exact
    reset" on a robot with ``exact_scenes``). Nothing shown or passed to the labeller names
    the policy. Raises EmergencyStop after an e-stop (the episodes so far are journaled)."""
    setup = journal.setup
    if set(policies) != set(setup.names):
        raise ValueError(
            f"the A/B session compares {list(setup.names)}; got policies {sorted(policies)}."
        )
    exact = bool(getattr(robot, "exact_scenes", False))
    done = len(journal.rounds())
    if done:
        progress(f"continuing the A/B session in {journal.directory}: {done} rounds done")
    for i in range(done, setup.rounds):
        scene = i
        note = scene_notes[i % len(scene_notes)] if scene_notes else ""
        note = note or ("exact reset of the simulated scene" if exact else "")
        row = {"round": i, "scene": scene, "note": note}
        for slot in SLOTS:
            policy = policies[setup.policy_on(i, slot)]
            aborts = 0
            while True:
                progress(
                    f"round {i + 1}/{setup.rounds}, scene {scene}{': ' + note if note else ''}"
                    f" -- reset the scene; policy {slot} runs next"
                )
                if exact:
                    robot.set_scene(scene)
                rec = run_episode(
                    robot, policy, labeller, limits, loop, episode=2 * i + (slot == "B")
                )
                if rec.steps:
                    meta = dict(rec.stats(), round=i, slot=slot, scene=scene)
                    journal.episodes.write(rec.to_episode(), rec.extras(), meta)
                if rec.label == Label.ESTOP:
                    raise EmergencyStop(
                        f"emergency stop in round {i + 1}, policy {slot} ({rec.reason}"
                        f"{': ' + rec.error if rec.error else ''}); {i} rounds are journaled "
                        f"in {journal.directory}; run again to continue from round {i + 1}."
                    )
                if rec.label != Label.ABORT:
                    break
                aborts += 1
                progress(f"  {slot}: aborted ({rec.reason}); rerunning it from scene {scene}")
                if aborts > max_aborts:
                    raise EmergencyStop(
                        f"round {i + 1}, policy {slot}: aborted {aborts} times; check the "
                        f"robot and the scene, then run again to continue from round {i + 1}."
                    )
            row[slot] = _episode_row(rec) | {"aborts": aborts}
            progress(f"  {slot}: {rec.label.value} in {rec.steps} steps")
        journal.write_round(row)
    return journal.rounds()


def ab_report(journal: ABJournal) -> dict:
    """The session's result with identities revealed: each policy's success (k / n, Wilson
    95% interval), the paired comparison of the second policy against the first (fixed:
    the first fails and the second succeeds in a round; exact McNemar p-value; Agresti-Min
    interval of the difference), success by slot, and the assignment per round."""
    setup, rows = journal.setup, journal.rounds()
    ref, other = setup.names
    won = {name: [] for name in setup.names}
    reveal = []
    for r in rows:
        a = setup.policy_on(r["round"], "A")
        reveal.append({"round": r["round"], "scene": r["scene"], "A": a})
        for slot in SLOTS:
            won[setup.policy_on(r["round"], slot)].append(bool(r[slot]["success"]))
    n = len(rows)
    policies = {}
    for name, s in won.items():
        lo, hi = wilson_interval(sum(s), n)
        policies[name] = {
            "successes": sum(s),
            "rounds": n,
            "success_rate": sum(s) / n if n else float("nan"),
            "ci_low": lo,
            "ci_high": hi,
        }
    paired = paired_outcomes(won[ref], won[other])
    by_slot = {s: sum(bool(r[s]["success"]) for r in rows) for s in SLOTS}
    return {
        "directory": journal.directory,
        "rounds": n,
        "rounds_planned": setup.rounds,
        "reference": ref,
        "candidate": other,
        "policies": policies,
        "paired": {
            k: paired[k] for k in ("fixed", "broken", "p_value", "diff_ci_low", "diff_ci_high")
        }
        | {
            "both": sum(a and b for a, b in zip(won[ref], won[other])),
            "neither": sum(not (a or b) for a, b in zip(won[ref], won[other])),
        },
        "successes_by_slot": by_slot,
        "aborts": sum(r[s].get("aborts", 0) for r in rows for s in SLOTS),
        "assignment": reveal,
    }


def format_report(rep: dict) -> str:
    """The report as text: the revealed assignment last."""
    ref, other, p = rep["reference"], rep["candidate"], rep["paired"]
    lines = [f"Blind A/B: {rep['rounds']} of {rep['rounds_planned']} rounds, matched scenes"]
    for name, v in rep["policies"].items():
        lines.append(
            f"  {name:<12} {v['successes']:>4} / {v['rounds']:<4} {v['success_rate']:6.1%}  "
            f"95% CI [{v['ci_low']:.1%}, {v['ci_high']:.1%}]"
        )
    lines.append(
        f"  {other} against {ref}, paired: fixed {p['fixed']}, broken {p['broken']}, both "
        f"{p['both']}, neither {p['neither']}; difference 95% CI [{p['diff_ci_low']:+.1%}, "
        f"{p['diff_ci_high']:+.1%}], exact McNemar p = {p['p_value']:.3g}"
    )
    slots = rep["successes_by_slot"]
    lines.append(
        f"  successes by label: A {slots['A']}, B {slots['B']}; aborted tries {rep['aborts']}"
    )
    lines.append(
        "  revealed: " + ", ".join(f"round {r['round'] + 1} A={r['A']}" for r in rep["assignment"])
    )
    return "\n".join(lines)


def write_report(journal: ABJournal, out=sys.stdout) -> dict:
    """Compute, print and save the report (``<dir>/report.json``)."""
    rep = ab_report(journal)
    write_json_atomic(os.path.join(journal.directory, "report.json"), rep)
    print(format_report(rep), file=out, flush=True)
    return rep
