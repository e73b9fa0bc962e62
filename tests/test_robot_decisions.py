"""The semi-MDP residual on the robot side: the actor decides every k control steps and
holds its correction, the journaled episode enters the replay as one transition per
decision (return, discount, terminal flag and Monte-Carlo bound against a hand count), the
demos as decision windows, a restart rebuilds the same replay, and bad settings are named."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax.replay import ReplayConfig
from resfit_jax.robot.config import RobotTrainConfig
from resfit_jax.robot.operator import Label, ScriptedLabeller
from resfit_jax.run.checkpointing import to_storable

sys.path.insert(0, os.path.dirname(__file__))
from robot_worker import PointRobot, point_chunk_setup  # noqa: E402

K, G = 2, 0.9
REPLAY = ReplayConfig(batch_size=16, utd=1, n_step=1, gamma=G, capacity=1000)
SETTINGS = dict(decision_steps=K, mc_bound=True, replay=REPLAY, sync_every="episode")


def _labeller():
    # episode 1 succeeds on its step 4 (5 steps: windows of 2, 2 and 1); the others time out
    return ScriptedLabeller(lambda e, t, o: Label.SUCCESS if (e, t) == (1, 4) else None)


def test_the_robot_decides_every_k_steps_and_stores_one_transition_per_decision(tmp_path):
    out = str(tmp_path / "run")
    trainer, limits = point_chunk_setup(out, **SETTINGS)
    assert trainer.learner.obs_dim == 4 + 1 + 2  # + chunk phase (k < 4) + the plan's next action
    rows = trainer.run(PointRobot(seed=1), _labeller(), limits, 3, progress=lambda s: None)
    assert [r["phase"] for r in rows] == ["warmup", "train", "train"]
    assert [r["steps"] for r in rows] == [12, 5, 12]
    assert [r["updates_this_episode"] for r in rows] == [0, 3, 6]  # one per decision

    # the actor: one correction per decision, held for the k steps of its window
    nz = trainer.rl.normalizer
    for entry in trainer.journal.entries()[1:]:
        ep, extras = trainer.journal.read(entry)
        res, a_b = extras["residual"], extras["base_action"]
        for t in range(ep.num_actions):
            np.testing.assert_array_equal(res[t], res[t - t % K])
            if not extras["clipped"][t].any():
                want = nz.unnormalize_action(jnp.clip(nz.normalize_action(a_b[t]) + res[t], -1, 1))
                np.testing.assert_allclose(ep.action[t], want, atol=1e-5)
        assert not np.allclose(res[0], res[K])  # exploration noise is drawn per decision

    # the replay: windows of 6, 3 and 6 decisions, in order
    assert trainer.rl.replay_size == 6 + 3 + 6
    d = jax.tree.map(np.asarray, trainer.rl.replay.data)
    succ = slice(6, 9)
    np.testing.assert_allclose(d.reward[succ], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(d.discount[succ], [G**2, G**2, G])
    np.testing.assert_array_equal(d.nonterminal[succ], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(d.mc_return[succ], [G**4, G**2, 1.0], rtol=1e-6)
    timeouts = np.r_[0:6, 9:15]
    np.testing.assert_array_equal(d.reward[timeouts], 0.0)
    np.testing.assert_allclose(d.discount[timeouts], G**2)
    np.testing.assert_array_equal(d.nonterminal[timeouts], 1.0)  # time limit: bootstrap
    assert np.all(np.isneginf(d.mc_return[timeouts]))  # no return-to-go from a timeout
    ep1, _ = trainer.journal.read(trainer.journal.entries()[1])
    np.testing.assert_allclose(d.obs[succ, :4], ep1.observation[0:5:K])  # decision frames
    np.testing.assert_allclose(d.next_obs[6:8, :4], ep1.observation[K:5:K])
    np.testing.assert_allclose(d.obs[succ, 4], [0.0, 0.5, 0.0])  # phase: chunk of 4
    # the demos: one window per demo step, each with its bound
    offline = trainer.rl.offline
    demo_steps = sum(ep.num_actions for ep in __import__("robot_worker").point_demos())
    assert int(offline.size) == demo_steps
    live_replay, live_state = trainer.rl.replay, trainer.rl.state
    trainer.close()

    again, _ = point_chunk_setup(out, **SETTINGS)
    assert again.rebuilt == {"episodes": 3, "env_steps": 29}
    jax.tree.map(np.testing.assert_array_equal, again.rl.replay, live_replay)
    jax.tree.map(
        np.testing.assert_array_equal, to_storable(again.rl.state), to_storable(live_state)
    )
    again.close()


def test_bad_semi_mdp_settings_on_the_robot_are_named(tmp_path):
    with pytest.raises(ValueError, match="must divide the base's execution horizon"):
        point_chunk_setup(str(tmp_path / "a"), decision_steps=3, replay=REPLAY)
    with pytest.raises(ValueError, match="mc_bound needs semi-MDP decisions"):
        RobotTrainConfig(mc_bound=True, replay=REPLAY)
    with pytest.raises(ValueError, match="one decision per return"):
        RobotTrainConfig(decision_steps=K, mc_bound=True)  # the default n_step is 3
    with pytest.raises(ValueError, match="demo_relabel must be one of"):
        RobotTrainConfig(decision_steps=K, demo_relabel="demo")
