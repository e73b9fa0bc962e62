"""Blind A/B evaluation (robot.blind_ab): a balanced hidden assignment, nothing the labeller
sees names a policy, both policies start each round from the same scene, the report's
paired statistics on a hand-made table, and a session SIGKILLed between rounds resumes."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from robot_worker import ab_setup, sigkill_when

from resfit_jax.robot.blind_ab import ABJournal, ABSetup, ab_report, assignments, run_ab
from resfit_jax.robot.journal import Journal
from resfit_jax.robot.operator import Label, ScriptedLabeller
from resfit_jax.robot.safety import EmergencyStop
from resfit_jax.run.stats import wilson_interval

NAMES = ("alpha-policy", "beta-policy")


def test_assignment_is_balanced_per_block_seeded_and_not_predictable():
    a = assignments(7, 40, block=4)
    assert a.shape == (40,) and a.dtype == bool
    assert (a.reshape(10, 4).sum(axis=1) == 2).all()  # every block: 2 of each
    np.testing.assert_array_equal(a, assignments(7, 40, block=4))
    assert not np.array_equal(a, assignments(8, 40, block=4))
    assert len({tuple(b) for b in a.reshape(10, 4)}) > 1  # the order varies between blocks
    assert assignments(7, 10, block=4).tolist() == a[:10].tolist()  # a prefix of the session
    assert (assignments(1, 30, block=2).reshape(15, 2).sum(axis=1) == 1).all()
    with pytest.raises(ValueError, match="even number"):
        assignments(0, 4, block=3)
    setup = ABSetup(NAMES, 40, seed=7)
    for i in range(40):
        assert setup.policy_on(i, "A") == NAMES[0 if a[i] else 1]
        assert {setup.policy_on(i, "A"), setup.policy_on(i, "B")} == set(NAMES)


def test_a_session_hides_identities_matches_scenes_and_reveals_them_in_the_report(tmp_path):
    rounds = 12
    robot, policies, journal, oracle, limits, loop = ab_setup(str(tmp_path / "ab"), rounds)
    seen = []  # everything the labeller is handed

    def label(episode, step, obs):
        seen.append((episode, step, np.asarray(obs).tolist()))
        return oracle.poll(step, obs)

    labeller = ScriptedLabeller(label)
    lines = []
    rows = run_ab(robot, policies, labeller, limits, loop, journal, progress=lines.append)
    assert [r["round"] for r in rows] == list(range(rounds))
    text = "\n".join(lines) + json.dumps(seen)
    for name in NAMES:  # nothing shown or labelled before the report names a policy
        assert name not in text
        for f in os.listdir(journal.directory):
            path = os.path.join(journal.directory, f)
            if f.startswith("round_"):
                assert name not in open(path).read()
    for e in Journal(os.path.join(journal.directory, "episodes")).entries():
        assert set(e.metadata) >= {"round", "slot", "scene"} and not set(NAMES) & set(
            map(str, e.metadata.values())
        )
    # matched initial conditions: A and B of a round start from the same scene, exactly
    assert robot.scenes == [i for i in range(rounds) for _ in "AB"]
    firsts = {}
    for e in Journal(os.path.join(journal.directory, "episodes")).entries():
        ep, _ = Journal.read(e)
        firsts.setdefault(e.metadata["round"], []).append(ep.observation[0])
    for i in range(rounds):
        np.testing.assert_array_equal(firsts[i][0], firsts[i][1])
    # what actually ran agrees with the revealed assignment; outcomes follow the policies
    setup = journal.setup
    for name, pol in policies.items():
        ran_scenes = [scene for _, scene in pol.ran]
        assert ran_scenes == list(range(rounds))
        for resets, scene in pol.ran:
            slot = "A" if resets % 2 == 1 else "B"
            assert setup.policy_on(scene, slot) == name
    rep = ab_report(journal)
    assert [r["A"] for r in rep["assignment"]] == [setup.policy_on(i, "A") for i in range(rounds)]
    alpha_ok = [i % 3 != 0 for i in range(rounds)]
    beta_ok = [i % 2 == 0 for i in range(rounds)]
    assert rep["policies"]["alpha-policy"]["successes"] == sum(alpha_ok)
    assert rep["policies"]["beta-policy"]["successes"] == sum(beta_ok)
    p = rep["paired"]
    assert p["fixed"] == sum(b and not a for a, b in zip(alpha_ok, beta_ok))
    assert p["broken"] == sum(a and not b for a, b in zip(alpha_ok, beta_ok))
    assert rep["successes_by_slot"]["A"] + rep["successes_by_slot"]["B"] == sum(alpha_ok) + sum(
        beta_ok
    )


def test_aborted_tries_are_rerun_from_the_same_scene_and_an_estop_ends_the_session(tmp_path):
    rounds = 4
    robot, policies, journal, oracle, limits, loop = ab_setup(str(tmp_path / "ab"), rounds)
    episodes = []

    def label(episode, step, obs):
        if step == 0:
            episodes.append(episode)
        if step == 2 and len(episodes) == 4:  # the 4th try (round 1, B) is aborted
            return Label.ABORT
        if step == 2 and len(episodes) == 7:  # round 2's B try (after the rerun): e-stop
            return Label.ESTOP
        return oracle.poll(step, obs)

    labeller = ScriptedLabeller(label)
    with pytest.raises(EmergencyStop, match="round 3, policy B"):
        run_ab(robot, policies, labeller, limits, loop, journal, progress=lambda s: None)
    rows = journal.rounds()
    assert len(rows) == 2 and rows[1]["B"]["aborts"] == 1 and rows[1]["A"]["aborts"] == 0
    assert robot.scenes == [0, 0, 1, 1, 1, 2, 2]  # the aborted B reran scene 1
    kept = Journal(os.path.join(journal.directory, "episodes")).entries()
    assert [e.metadata["label"] for e in kept].count("abort") == 1
    assert kept[-1].metadata["label"] == "estop"  # the e-stopped episode is kept too
    # continuing: round 3 again from its scene, then round 4
    run_ab(robot, policies, oracle, limits, loop, journal, progress=lambda s: None)
    assert robot.scenes[7:] == [2, 2, 3, 3] and len(journal.rounds()) == rounds


def test_report_statistics_on_a_hand_made_table(tmp_path):
    """10 rounds: reference succeeds in 0 and 2-4, candidate in 2-8; so both 2-4 (3), fixed
    5-8 (4), broken 0 (1), neither 1 and 9 (2): McNemar p = 2 * P(X <= 1 | 5, 1/2) = 0.375."""
    setup = ABSetup(("ref", "cand"), 10, seed=5)
    journal = ABJournal(str(tmp_path / "ab"), setup)
    ref_ok = [i in (0, 2, 3, 4) for i in range(10)]
    cand_ok = [2 <= i <= 8 for i in range(10)]
    for i in range(10):
        row = {"round": i, "scene": i, "note": ""}
        for slot in "AB":
            ok = ref_ok[i] if setup.policy_on(i, slot) == "ref" else cand_ok[i]
            row[slot] = {"label": "success" if ok else "failure", "success": ok, "aborts": 0}
        journal.write_round(row)
    rep = ab_report(journal)
    p = rep["paired"]
    assert (p["fixed"], p["broken"], p["both"], p["neither"]) == (4, 1, 3, 2)
    assert p["p_value"] == pytest.approx(2 * sum(math.comb(5, k) for k in range(2)) / 2**5)
    assert p["p_value"] == pytest.approx(0.375)
    assert rep["policies"]["ref"]["successes"] == 4 and rep["policies"]["cand"]["successes"] == 7
    lo, hi = wilson_interval(7, 10)
    assert (rep["policies"]["cand"]["ci_low"], rep["policies"]["cand"]["ci_high"]) == (lo, hi)
    assert p["diff_ci_low"] < 0.3 < p["diff_ci_high"]
    # another setup on the same directory is refused: the rounds belong to one assignment
    # and one pair of policies; more rounds extend the session
    with pytest.raises(ValueError, match="another setup .*seed"):
        ABJournal(str(tmp_path / "ab"), ABSetup(("ref", "cand"), 10, seed=6))
    with pytest.raises(ValueError, match="another setup .*state"):
        ABJournal(str(tmp_path / "ab"), ABSetup(("ref", "cand"), 10, seed=5, state="ckpt 9"))
    longer = ABJournal(str(tmp_path / "ab"), ABSetup(("ref", "cand"), 14, seed=5))
    assert len(longer.rounds()) == 10 and ab_report(longer)["rounds_planned"] == 14
    assert ab_report(longer)["assignment"] == rep["assignment"]


def test_a_session_killed_between_rounds_resumes_where_it_stopped(tmp_path):
    directory, rounds = str(tmp_path / "ab"), 8
    worker = os.path.join(os.path.dirname(__file__), "robot_worker.py")
    proc = subprocess.Popen(
        [sys.executable, worker, "ab", directory, str(rounds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sigkill_when(proc, directory, "round_", 2, 120, 0.25)  # inside the 3rd round
    robot, policies, journal, labeller, limits, loop = ab_setup(directory, rounds)
    before = {r["round"]: r for r in journal.rounds()}
    assert 2 <= len(before) < rounds, proc.stdout.read()
    assert not any(".tmp" in n for n in os.listdir(directory))
    lines = []
    rows = run_ab(robot, policies, labeller, limits, loop, journal, progress=lines.append)
    assert [r["round"] for r in rows] == list(range(rounds))
    assert all(rows[i] == before[i] for i in before)  # finished rounds untouched
    assert robot.scenes[0] == len(before)  # the interrupted round is rerun from its scene
    assert any("continuing" in line for line in lines)
    rep = ab_report(journal)
    assert rep["rounds"] == rounds
    assert rep["policies"]["alpha-policy"]["successes"] == sum(i % 3 != 0 for i in range(rounds))


def test_a_robot_run_evaluates_its_residual_against_its_base(tmp_path):
    """RobotTrainer.ab_policies: "base" adds no residual, "resfit" the learner's
    deterministic one; both run through run_ab from matched scenes."""
    from robot_worker import ScenePointRobot, point_setup

    trainer, limits = point_setup(str(tmp_path / "run"))
    robot = ScenePointRobot()
    oracle = ScriptedLabeller(lambda e, t, o: Label.SUCCESS if robot.success() else None)
    trainer.run(robot, oracle, limits, 3, progress=lambda s: None)  # an actor off zero
    updates = trainer.rl.updates
    policies = trainer.ab_policies(robot)
    setup = ABSetup(("base", "resfit"), 4, seed=1)
    journal = ABJournal(str(tmp_path / "ab"), setup)
    run_ab(robot, policies, oracle, limits, trainer.cfg.loop, journal, progress=lambda s: None)
    assert trainer.rl.updates == updates and updates > 0  # nothing learned from the session
    trainer.close()
    for e in Journal(os.path.join(journal.directory, "episodes")).entries():
        _, extras = Journal.read(e)
        who = setup.policy_on(e.metadata["round"], e.metadata["slot"])
        moved = np.abs(extras["residual"]).max()
        assert (moved == 0) == (who == "base"), (who, moved)
