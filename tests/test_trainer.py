"""Residual training driver on PointReach (fast): every phase, exact resume, exact-N evaluation
with matched base episodes, the relabelled demo buffer, config presets and overrides."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax import envs
from resfit_jax.agents.residual_td3 import ResidualTD3Config
from resfit_jax.base.policy import ChunkedBase, FunctionBase
from resfit_jax.data.demos import collect_episodes, make_rollout
from resfit_jax.data.rlds import Episode
from resfit_jax.envs.core import EpisodeWrapper
from resfit_jax.envs.point_reach import biased_base_action
from resfit_jax.normalization import ActionScaler, Normalizer, StateStandardizer
from resfit_jax.replay import NStepWriter, ReplayBuffer, ReplayConfig
from resfit_jax.replay.demos import pad_episodes, relabel_demos
from resfit_jax.run.checkpointing import to_storable
from resfit_jax.run.configs import apply_overrides
from resfit_jax.run.logger import read_metrics
from resfit_jax.sim.config import BaseExecution, ResidualOptions, TrainConfig
from resfit_jax.sim.evaluation import episode_keys
from resfit_jax.sim.presets import preset
from resfit_jax.sim.report import held_out_outcomes, paired_between, results_table
from resfit_jax.sim.trainer import make_trainer, rescore_run, train_residual

TASK = envs.PointReach(episode_length=20)
LEARNER = ResidualTD3Config(
    actor_hidden_dims=(32, 32), critic_hidden_dims=(32, 32), num_critics=4, actor_lr=1e-4
)
REPLAY = ReplayConfig(batch_size=32, utd=2, capacity=2048)
CFG = TrainConfig(
    learner=LEARNER,
    replay=REPLAY,
    num_envs=4,
    warmup_env_steps=64,
    critic_warmup_updates=20,
    critic_warmup_chunk=10,
    total_env_steps=192,
    steps_per_chunk=8,
    eval_every=64,
    eval_episodes=13,
)


@pytest.fixture(scope="module")
def demos():
    expert = envs.make_expert("PointReach", TASK, envs.ExpertStyle())
    eps, _ = collect_episodes(make_rollout(TASK, expert.init, expert.act), 12, 12)
    return eps


@pytest.fixture(scope="module")
def trainer(demos):
    return make_trainer(TASK, FunctionBase(biased_base_action, 2), demos, CFG, seeds=[0, 1])


@pytest.fixture(scope="module")
def full_run(trainer, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("full"))
    return out, train_residual(trainer, out, progress=False, task_name="PointReach")


def test_short_run_goes_through_every_phase(full_run):
    out, summary = full_run
    assert summary["complete"] and summary["seeds"] == [0, 1]
    assert summary["env_steps"] == CFG.train_chunks * CFG.env_steps_per_chunk == 192
    assert summary["warmup_env_steps"] == 64
    rows = read_metrics(out)
    kinds = {r["kind"] for r in rows}
    assert kinds == {"warmup", "critic_warmup", "train", "eval", "final_eval"}
    for seed in (0, 1):
        mine = [r for r in rows if r["seed"] == seed]
        assert sum(r["kind"] == "warmup" for r in mine) == CFG.warmup_chunks == 2
        assert sum(r["kind"] == "critic_warmup" for r in mine) == 2
        assert sum(r["kind"] == "train" for r in mine) == CFG.train_chunks == 6
        evals = [r for r in mine if r["kind"] == "eval"]
        assert [r["env_steps"] for r in evals] == [0, 64, 128, 192]
        assert all(r["episodes"] == CFG.eval_episodes for r in evals)
        assert all(np.isfinite(r["critic_loss"]) for r in mine if r["kind"] == "train")
    ls = summary["loop_state"]
    # every collected env step became a transition (minus the open n-step windows)
    size = np.asarray(ls.replay_state.size)
    assert np.all(size <= 64 + 192) and np.all(size >= 64 + 192 - 4 * CFG.replay.n_step)
    assert np.asarray(ls.learner_state.critic_steps).tolist() == [20 + 48 * 2] * 2
    # the two seeds are different runs
    leaves = jax.tree.leaves(ls.learner_state.critic_params)
    assert any(not np.allclose(x[0], x[1]) for x in leaves)
    for name in ("config.json", "summary.json", "metrics.jsonl"):
        assert os.path.exists(os.path.join(out, name))
    assert sorted(os.listdir(os.path.join(out, "tb"))) == ["seed_0", "seed_1"]
    assert "PointReach" in results_table(summary)
    assert "Held-out final evaluation" in results_table(summary)


def test_every_evaluation_is_paired_and_the_final_one_uses_held_out_starts(trainer, full_run):
    """Eval rows carry fixed / broken / churn / gain / p against the base on the same starts;
    the final evaluation runs on starts no periodic evaluation used, per seed and pooled."""
    out, summary = full_run
    rows = [r for r in read_metrics(out) if r["kind"] == "eval"]
    first = [r for r in rows if r["env_steps"] == 0]
    assert all(r["fixed"] == r["broken"] == 0 and r["p_value"] == 1.0 for r in first)
    for r in rows:
        n = r["episodes"]
        assert r["churn"] == r["broken"] / n and r["gain"] == r["fixed"] / n
        # success = base + fixed - broken, on the same episodes
        assert r["successes"] == round(r["base_success_rate"] * n) + r["fixed"] - r["broken"]
    final = summary["final"]
    assert len(final["per_seed"]) == 2 and final["pooled"]["episodes"] == 2 * CFG.eval_episodes
    # held-out starts: different initial states from the periodic ones
    ev_keys, fin_keys = trainer.evaluator.eval_keys(), trainer.evaluator.final_keys()
    s_eval = jax.vmap(EpisodeWrapper(TASK).reset)(episode_keys(ev_keys[0], 5)).obs
    s_fin = jax.vmap(EpisodeWrapper(TASK).reset)(episode_keys(fin_keys[0], 5)).obs
    assert not np.allclose(s_eval, s_fin)
    p = final["pooled"]
    assert p["fixed"] == sum(r["fixed"] for r in final["per_seed"])
    assert p["broken"] == sum(r["broken"] for r in final["per_seed"])
    # every held-out episode's outcome is kept, consistent with the counts
    for r in final["per_seed"] + final["base_per_seed"]:
        assert len(r["outcomes"]) == r["episodes"] and r["outcomes"].count("1") == r["successes"]
    base, pol = held_out_outcomes(summary)
    assert sum(b == "0" and q == "1" for b, q in zip(base, pol)) == p["fixed"]
    assert sum(b == "1" and q == "0" for b, q in zip(base, pol)) == p["broken"]
    # the run records the machine it was started on (MJX outcomes differ across CPU types)
    from resfit_jax.run.machine import machine_info
    from studies.sample_efficiency import run_cpu

    assert run_cpu(out) == machine_info()["cpu"]
    # a finished run becomes a headline.json row
    from studies.headline import add, row_from_run, table

    row = row_from_run(out, "ResFiT", "test")
    assert row["seeds"] == 2 and row["success_rate"] == p["success_rate"]
    assert row["evaluation"] == f"held-out, {CFG.eval_episodes} per seed"
    assert "| PointReach | ResFiT (test) |" in table(add({"rows": []}, row))


def test_resume_equals_uninterrupted_run(trainer, full_run, tmp_path):
    _, full = full_run
    out = str(tmp_path / "staged")
    first = train_residual(
        trainer, out, progress=False, stop_at_env_steps=64, task_name="PointReach"
    )
    assert not first["complete"] and first["env_steps"] == 64
    with pytest.raises(FileExistsError, match="--resume"):
        train_residual(trainer, out, progress=False)
    resumed = train_residual(trainer, out, resume=True, progress=False, task_name="PointReach")
    assert resumed["complete"]
    a, b = to_storable(full["loop_state"]), to_storable(resumed["loop_state"])
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert full["resfit"] == resumed["resfit"]
    # the same starts and base: the two runs pair episode by episode, and agree
    same = paired_between(full, resumed)
    assert same["fixed"] == same["broken"] == 0
    assert same["episodes"] == 2 * CFG.eval_episodes
    assert (
        same["success_rate"]
        == same["reference_success_rate"]
        == full["final"]["pooled"]["success_rate"]
    )
    # rescoring a finished run reproduces its held-out evaluation and changes nothing else
    n_rows = len(read_metrics(out))
    again = rescore_run(trainer, out, task_name="PointReach")
    assert again["final"] == resumed["final"] and "rescored_from" not in again["final"]
    assert len(read_metrics(out)) == n_rows
    assert again["wall_s"] == pytest.approx(resumed["wall_s"], abs=1.0)
    # the metrics file holds each row once
    rows = read_metrics(out)
    evals = [(r["seed"], r["env_steps"]) for r in rows if r["kind"] == "eval"]
    assert len(evals) == len(set(evals)) == 8


def test_a_killed_run_resumes_from_its_timed_checkpoint_between_evaluations(
    trainer, full_run, tmp_path, monkeypatch
):
    """With save_every_s=0 every chunk end checkpoints: a run killed without warning (no
    Ctrl-C path) in its 4th training chunk resumes from the 3rd's end (96 env steps, between
    the evaluations at 64 and 128) and ends exactly where the uninterrupted run ends."""
    _, full = full_run
    out = str(tmp_path / "killed")
    train, calls = trainer.train, []

    def dies_in_the_fourth_chunk(state, offline):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("power cut")
        return train(state, offline)

    monkeypatch.setattr(trainer, "train", dies_in_the_fourth_chunk)
    with pytest.raises(RuntimeError, match="power cut"):
        train_residual(trainer, out, progress=False, save_every_s=0.0)
    monkeypatch.undo()
    from resfit_jax.run.checkpointing import RunCheckpointer

    ckpt = RunCheckpointer(os.path.join(out, "checkpoints"))
    _, saved = ckpt.restore({"loop": trainer.init(), "offline": trainer.offline})
    ckpt.close()
    assert saved["phase"] == "train" and saved["env_steps"] == 96 and saved["chunk"] == 3
    resumed = train_residual(trainer, out, resume=True, progress=False)
    assert resumed["complete"] and resumed["resfit"] == full["resfit"]
    jax.tree.map(
        np.testing.assert_array_equal,
        to_storable(full["loop_state"]),
        to_storable(resumed["loop_state"]),
    )


def test_sigterm_in_a_script_is_a_ctrl_c():
    """setup_script's handler turns SIGTERM (kill, preemption) into KeyboardInterrupt, the
    trainers' checkpoint-and-stop path."""
    import signal

    from resfit_jax.run.runtime import interrupt_on_sigterm

    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert interrupt_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_resume_after_the_demos_changed_equals_the_uninterrupted_run(demos, full_run, tmp_path):
    """The normalizer and the demo buffer travel in the checkpoint: a run resumed by a trainer
    built from different demos (other statistics, other relabelled transitions) continues with
    the ones it started with and ends exactly where the uninterrupted run ends."""
    import dataclasses

    _, full = full_run
    out = str(tmp_path / "staged")
    base = FunctionBase(biased_base_action, 2)
    first = make_trainer(TASK, base, demos, CFG, seeds=[0, 1])
    train_residual(first, out, progress=False, stop_at_env_steps=64)
    with pytest.raises(ValueError, match="not finished"):
        rescore_run(first, out)
    changed = [
        dataclasses.replace(ep, observation=ep.observation * 1.3 + 0.1, action=ep.action * 0.8)
        for ep in demos
    ]
    other = make_trainer(TASK, base, changed, CFG, seeds=[0, 1])
    assert not np.allclose(other.normalizer.obs.mean, first.normalizer.obs.mean)
    resumed = train_residual(other, out, resume=True, progress=False)
    np.testing.assert_array_equal(other.normalizer.obs.mean, first.normalizer.obs.mean)
    a, b = to_storable(full["loop_state"]), to_storable(resumed["loop_state"])
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert full["resfit"] == resumed["resfit"]


def test_a_run_directory_is_locked_and_a_resume_with_other_inputs_is_refused(trainer, tmp_path):
    """Two runs on one directory: the second is refused, naming the holder; a lock file left
    by a dead process does not block; a resume whose base or demos differ is refused."""
    from resfit_jax.run.locks import RunLock, RunLockedError

    out = str(tmp_path / "locked")
    with RunLock(out):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            train_residual(trainer, out, progress=False)
    with open(os.path.join(out, ".lock"), "w") as f:  # stale: nobody holds it
        f.write('{"pid": 999999}')
    first = train_residual(
        trainer, out, progress=False, stop_at_env_steps=64, identity={"base": "aaa", "demos": "ddd"}
    )
    assert not first["complete"]
    with pytest.raises(ValueError, match="base: another file.*The checkpoint is fine"):
        train_residual(
            trainer, out, resume=True, progress=False, identity={"base": "bbb", "demos": "ddd"}
        )


def test_resume_with_a_different_config_is_refused(demos, full_run):
    out, _ = full_run
    other = make_trainer(
        TASK,
        FunctionBase(biased_base_action, 2),
        demos,
        CFG.replace(eval_episodes=14),
        seeds=[0, 1],
    )
    with pytest.raises(ValueError, match="other settings \\(eval_episodes: 13 -> 14\\)"):
        train_residual(other, out, resume=True, progress=False)
    # other seeds: named before any checkpoint is read (it would not fit their shapes)
    seeds = make_trainer(TASK, FunctionBase(biased_base_action, 2), demos, CFG, seeds=[0, 1, 2])
    with pytest.raises(ValueError, match="seeds: \\[0, 1\\] -> \\[0, 1, 2\\]"):
        train_residual(seeds, out, resume=True, progress=False)


def test_base_only_evaluation_equals_the_base_rolled_out_by_hand(trainer):
    """The trainer's base evaluation: exactly N episodes, same successes and lengths as a plain
    step-by-step rollout of the base on the same initial states."""
    ev = jax.device_get(
        trainer.evaluator.evaluate_base(trainer.normalizer, trainer.evaluator.eval_keys())
    )
    n = CFG.eval_episodes
    assert ev["success"].shape == (2, n)
    nz = trainer.normalizer
    for i, key in enumerate(trainer.evaluator.eval_keys()):
        env = EpisodeWrapper(TASK)
        s = jax.vmap(env.reset)(episode_keys(key, n))
        succ, length, done = np.zeros(n, bool), np.zeros(n, int), np.zeros(n, bool)
        for _ in range(TASK.horizon):
            raw = biased_base_action(s.obs)
            a = nz.unnormalize_action(jnp.clip(nz.action.normalize(raw), -1.0, 1.0))
            s = jax.vmap(env.step)(s, a)
            ended = np.asarray(s.done) & ~done
            succ |= ended & np.asarray(s.info["success"])
            length = np.where(ended, np.asarray(s.info["steps"]), length)
            done |= np.asarray(s.done)
        np.testing.assert_array_equal(ev["success"][i], succ)
        np.testing.assert_array_equal(ev["length"][i], length)
        assert 0 < succ.mean() < 1


def _episode(obs_values, success):
    t = len(obs_values) - 1
    obs = np.repeat(np.asarray(obs_values, np.float32)[:, None], 4, axis=1)
    return Episode.from_rollout(obs, np.full((t, 2), 0.5, np.float32), success)


def test_demo_buffer_relabels_with_a_fresh_base_queue_per_episode():
    """Chunk K = 3 whose actions carry the observation at which the chunk was predicted: the
    stored base action of frame t is that of frame 3 * (t // 3) of the SAME demo."""
    k = 3
    base = ChunkedBase(lambda o: jnp.repeat(o[:, None, :2], k, axis=1), 2, k)
    eps = [
        _episode(np.arange(100, 108), True),
        _episode(np.arange(200, 205), False),
        _episode(np.arange(300, 306), True),
    ]
    nz = Normalizer(
        obs=StateStandardizer.identity(4),
        action=ActionScaler(center=jnp.zeros(2), half_range=jnp.full(2, 1000.0)),
    )
    writer = NStepWriter(n=2, gamma=0.9)
    padded = jax.tree.map(jnp.asarray, pad_episodes(eps))
    buf = ReplayBuffer(int(padded["length"].sum()))
    state = jax.jit(lambda p: relabel_demos(p, base, nz, writer, buf))(padded)
    assert int(state.size) == 7 + 4 + 5
    d = jax.tree.map(np.asarray, state.data)
    raw_obs = d.obs[:, 0]
    episode = (raw_obs // 100).astype(int)
    t = (raw_obs % 100).astype(int)
    np.testing.assert_allclose(
        d.base_action[:, 0] * 1000, episode * 100 + k * (t // k), rtol=0, atol=1e-3
    )
    nt = (d.next_obs[:, 0] % 100).astype(int)
    np.testing.assert_allclose(
        d.next_base_action[:, 0] * 1000, episode * 100 + k * (nt // k), atol=1e-3
    )
    np.testing.assert_allclose(d.action, 0.5 / 1000)
    # reward 1 on the final transition of the successful demos only; terminal only there
    last = {1: 7, 2: 4, 3: 5}
    ends_at_last = nt == np.vectorize(last.get)(episode)
    success = np.isin(episode, [1, 3])
    expect_r = np.where(ends_at_last & success, np.where(t == nt - 1, 1.0, 0.9), 0.0)
    np.testing.assert_allclose(d.reward, expect_r, atol=1e-6)
    np.testing.assert_array_equal(d.nonterminal == 0, ends_at_last & success)


def test_presets_and_overrides():
    cpu, paper = preset("PickPlace", "cpu"), preset("BimanualHandover", "paper")
    assert cpu.learner.critic_hidden_dims == (256, 256) and cpu.num_envs == 16
    assert cpu.critic_steps_per_env_step == pytest.approx(0.25)
    # issue 14's arm preset: Markov inputs, the held residual, a 10k warm-up, each seed's
    # best periodic state
    assert cpu.residual == ResidualOptions(base_phase=True, base_plan=1, hold=True)
    assert cpu.select.rule == "best"
    assert cpu.warmup_env_steps >= 10_000
    rlpd = preset("PickPlace", "cpu", "rlpd")  # the baselines get no ResFiT options
    assert rlpd.residual == ResidualOptions() and not rlpd.residual.any_on
    assert paper.learner.critic_hidden_dims == (1024, 1024) and paper.num_envs == 1
    assert paper.learner.action_scale == 0.2 and paper.learner.actor_lr == 5e-6
    assert paper.critic_steps_per_env_step == 4 and paper.total_env_steps == 500_000
    cfg = apply_overrides(
        cpu,
        [
            "num_envs=32",
            "replay.utd=8",
            "learner.critic_hidden_dims=512,512",
            "learner.target_noise=false",
            "replay.gamma=1",
        ],
    )
    assert (cfg.num_envs, cfg.replay.utd, cfg.learner.critic_hidden_dims) == (32, 8, (512, 512))
    assert cfg.learner.target_noise is False and cfg.replay.gamma == 1.0
    assert cfg.critic_steps_per_env_step == 8 / 32
    with pytest.raises(ValueError, match="has no field 'utd'"):
        apply_overrides(cpu, ["learner.utd=8"])
    with pytest.raises(ValueError, match="is a group of settings"):
        apply_overrides(cpu, ["replay=3"])
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        apply_overrides(cpu, ["replay.capacity=0"])
    with pytest.raises(ValueError, match="has no field 'utdd'"):
        apply_overrides(cpu, ["replay.utdd=3"])
    with pytest.raises(ValueError, match="expected int"):
        apply_overrides(cpu, ["num_envs=many"])
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        apply_overrides(cpu, ["num_envs=0"])
    # settings that must change together are validated in their final combination
    reach = preset("PointReach", "cpu")
    assert reach.replay.bootstrap_truncation and not cpu.replay.bootstrap_truncation
    both = ["replay.bootstrap_truncation=false", "residual.time_feature=true"]
    assert apply_overrides(reach, both).residual.time_feature
    assert apply_overrides(reach, both[::-1]).residual.time_feature
    with pytest.raises(ValueError, match="bootstrap_truncation=False"):
        apply_overrides(reach, both[1:])
    with pytest.raises(ValueError, match="has no sub-fields"):
        apply_overrides(cpu, ["num_envs.x=3"])
    with pytest.raises(ValueError, match="No residual-training preset"):
        preset("Cartwheel")


def test_a_diverging_update_stops_the_run_with_a_floating_point_error(demos, tmp_path):
    """The presets skip the per-update host callback; the trainer checks each chunk and raises
    FloatingPointError (catchable by type) naming the loss, without checkpointing it."""
    import dataclasses

    cfg = CFG.replace(learner=dataclasses.replace(LEARNER, critic_lr=1e38, check_finite=False))
    bad = make_trainer(TASK, FunctionBase(biased_base_action, 2), demos, cfg, seeds=[0])
    with pytest.raises(FloatingPointError, match="critic_loss.*the update diverged"):
        train_residual(bad, str(tmp_path), progress=False)


def test_wrong_base_action_size_is_rejected(demos):
    bad = FunctionBase(lambda o: jnp.zeros(o.shape[:-1] + (3,)), 3)
    with pytest.raises(ValueError, match=r"base policy's action size \(3\) does not match"):
        make_trainer(TASK, bad, demos, CFG, seeds=[0])


@pytest.mark.slow
def test_time_feature_run_sees_time_and_its_base_does_not(demos, tmp_path):
    """time_feature: learner obs [D + 1] (last = t / horizon, in the demo buffer too), base-only
    evaluation unchanged, truncation terminal; a short run completes."""
    import dataclasses

    with pytest.raises(ValueError, match="bootstrap_truncation=False"):
        CFG.replace(residual=ResidualOptions(time_feature=True))
    cfg = CFG.replace(
        residual=ResidualOptions(time_feature=True),
        total_env_steps=64,
        replay=dataclasses.replace(REPLAY, bootstrap_truncation=False),
    )
    timed = make_trainer(TASK, FunctionBase(biased_base_action, 2), demos, cfg, seeds=[0])
    assert timed.loop.task.observation_spec.shape == (5,)
    n = int(timed.offline.size)
    obs, nxt = np.asarray(timed.offline.data.obs[:n]), np.asarray(timed.offline.data.next_obs[:n])
    assert np.all((obs[:, -1] >= 0) & (obs[:, -1] < 1)) and np.any(obs[:, -1] == 0)
    k = np.round((nxt[:, -1] - obs[:, -1]) * TASK.horizon)  # n-step gaps of 1..n
    assert np.all((k >= 1) & (k <= REPLAY.n_step))
    plain = make_trainer(TASK, FunctionBase(biased_base_action, 2), demos, CFG, seeds=[0])
    ev_t = timed.evaluator.evaluate_base(timed.normalizer, timed.evaluator.eval_keys())
    ev_p = plain.evaluator.evaluate_base(plain.normalizer, plain.evaluator.eval_keys())
    np.testing.assert_array_equal(ev_t["success"], ev_p["success"])
    summary = train_residual(timed, str(tmp_path), progress=False, task_name="PointReach")
    assert summary["complete"]


def test_chunk_phase_is_the_same_for_online_demo_and_evaluation_frames(demos):
    """base_phase appends (t mod K) / K for a chunk-K base (t = step in the episode) to the
    learner's observation, identically in the demo buffer, the online replay and the
    evaluation policy; the base keeps its own observation."""
    import dataclasses

    from resfit_jax.base.residual import ResidualPolicy

    k = 3
    base = ChunkedBase(
        lambda o: jnp.repeat(biased_base_action(o[..., :4])[:, None], k, axis=1), 2, k
    )
    cfg = CFG.replace(
        residual=ResidualOptions(time_feature=True, base_phase=True),
        replay=dataclasses.replace(REPLAY, bootstrap_truncation=False),
    )
    tr = make_trainer(TASK, base, demos, cfg, seeds=[0])
    assert tr.loop.learner.obs_dim == 4 + 1 + 1

    def check(obs):  # columns: task obs [4], t / horizon, phase
        t = np.round(obs[:, -2] * TASK.horizon).astype(int)
        np.testing.assert_allclose(obs[:, -1], (t % k) / k, atol=1e-6)
        return t

    n = int(tr.offline.size)
    t_demo = check(np.asarray(tr.offline.data.obs[:n]))
    check(np.asarray(tr.offline.data.next_obs[:n]))
    assert len(set(t_demo % k)) == k
    ls, _ = tr.warmup(tr.init())
    size = int(ls.replay_state.size[0])
    t_online = check(np.asarray(ls.replay_state.data.obs[0, :size]))
    check(np.asarray(ls.replay_state.data.next_obs[0, :size]))
    assert len(set(t_online % k)) == k
    policy = ResidualPolicy(tr.loop.base, tr.normalizer, tr.loop.learner, None, tr.loop.features)
    env = EpisodeWrapper(tr.task)
    s = jax.vmap(env.reset)(episode_keys(jax.random.key(0), 4))
    q = policy.init_state(4)
    for _ in range(7):
        raw, q = tr.loop.base.step(q, s.obs)
        check(np.asarray(policy.learner_obs(s.obs, q)))
        s = jax.vmap(env.step)(s, raw)
    with pytest.raises(ValueError, match="need a chunked base"):
        make_trainer(
            TASK,
            FunctionBase(biased_base_action, 2),
            demos,
            CFG.replace(residual=ResidualOptions(base_phase=True)),
            seeds=[0],
        )
    # re-anchoring more often: execution horizon 2 of the chunk of 3 gives phases 0, 1/2
    tr2 = make_trainer(
        TASK, base, demos, cfg.replace(base=BaseExecution(execution_horizon=2)), seeds=[0]
    )
    assert tr2.loop.base.base.horizon == 2 and tr2.loop.features.horizon == 2
    n2 = int(tr2.offline.size)
    obs2 = np.asarray(tr2.offline.data.obs[:n2])
    t2 = np.round(obs2[:, -2] * TASK.horizon).astype(int)
    np.testing.assert_allclose(obs2[:, -1], (t2 % 2) / 2, atol=1e-6)


@pytest.mark.slow
def test_persistent_offset_resets_at_each_refill_and_stays_within_its_bound(demos, tmp_path):
    """offset_bound: the learner's observation ends with the offset [A]; it is zero on every
    frame where the chunk-3 base starts a chunk, never exceeds the bound, and accumulates in
    between, in the demo buffer, the online replay and the evaluation policy alike."""
    import dataclasses

    k, bound = 3, 0.04
    base = ChunkedBase(
        lambda o: jnp.repeat(biased_base_action(o[..., :4])[:, None], k, axis=1), 2, k
    )
    cfg = CFG.replace(
        residual=ResidualOptions(time_feature=True, offset_bound=bound),
        total_env_steps=64,
        replay=dataclasses.replace(REPLAY, bootstrap_truncation=False),
    )
    tr = make_trainer(TASK, base, demos, cfg, seeds=[0])
    assert tr.loop.learner.obs_dim == 4 + 1 + 2

    def check(obs):  # columns: task obs [4], t / horizon, offset [2]
        t = np.round(obs[:, 4] * TASK.horizon).astype(int)
        off = obs[:, -2:]
        assert np.all(np.abs(off) <= bound + 1e-6)
        np.testing.assert_array_equal(off[t % k == 0], 0.0)
        assert np.abs(off[t % k != 0]).max() > 1e-3

    n = int(tr.offline.size)
    check(np.asarray(tr.offline.data.obs[:n]))
    ls, _ = tr.warmup(tr.init())
    size = int(ls.replay_state.size[0])
    check(np.asarray(ls.replay_state.data.obs[0, :size]))
    check(np.asarray(ls.replay_state.data.next_obs[0, :size]))
    summary = train_residual(tr, str(tmp_path), progress=False, task_name="PointReach")
    assert summary["complete"] and summary["final"]["pooled"]["episodes"] == CFG.eval_episodes
    with pytest.raises(ValueError, match="offset_bound must be in"):
        ResidualOptions(offset_bound=-0.1)


@pytest.mark.slow
def test_held_residual_acts_at_chunk_starts_only_and_holds_its_correction(demos, tmp_path):
    """residual_hold: the learner's observation ends with the held offset [A] and the 0/1
    "residual acts" flag, which is 1 exactly where the chunk-3 base starts a chunk; there the
    offset is 0, and within a chunk it stays what the first step chose (demo buffer and
    online replay); online, the executed action equals the effective base wherever the flag
    is 0; the learner's residual and TD target ignore the actor there."""
    import dataclasses

    k = 3
    base = ChunkedBase(
        lambda o: jnp.repeat(biased_base_action(o[..., :4])[:, None], k, axis=1), 2, k
    )
    cfg = CFG.replace(
        residual=ResidualOptions(time_feature=True, hold=True),
        total_env_steps=64,
        replay=dataclasses.replace(REPLAY, bootstrap_truncation=False),
    )
    tr = make_trainer(TASK, base, demos, cfg, seeds=[0])
    assert tr.loop.learner.obs_dim == 4 + 1 + 2 + 1 and tr.loop.learner.config.residual_mask

    def check(obs, online=None):  # columns: task obs [4], t / horizon, offset [2], flag
        t = np.round(obs[:, 4] * TASK.horizon).astype(int)
        off, flag = obs[:, 5:7], obs[:, 7]
        np.testing.assert_array_equal(flag, (t % k == 0).astype(np.float32))
        np.testing.assert_array_equal(off[t % k == 0], 0.0)
        assert np.abs(off[t % k != 0]).max() > 1e-3
        if online is not None:  # the residual acted at chunk starts only
            action, base_action = online
            np.testing.assert_allclose(action[flag == 0], base_action[flag == 0], atol=1e-6)
            assert np.abs(action - base_action)[flag == 1].max() > 1e-3
        return t, off

    def held(obs):  # within one chunk of one episode (its goal), one offset
        t, off = check(obs)
        groups = {}
        for i, key in enumerate(zip(map(tuple, np.round(obs[:, 2:4], 5)), t // k)):
            if t[i] % k:
                groups.setdefault(key, []).append(i)
        assert max(map(len, groups.values())) == k - 1
        for rows in groups.values():
            np.testing.assert_allclose(off[rows], np.repeat(off[rows[:1]], len(rows), 0), atol=1e-6)

    held(np.asarray(tr.offline.data.obs[: int(tr.offline.size)]))
    ls, _ = tr.warmup(tr.init())
    size = int(ls.replay_state.size[0])
    d = jax.tree.map(lambda x: np.asarray(x[0, :size]), ls.replay_state.data)
    check(d.obs, (d.action, d.base_action))
    held(d.obs)
    check(d.next_obs)
    # the learner: no residual where the flag is 0, and the target ignores the actor there
    from resfit_jax.agents.residual_td3 import make_learner  # the same, outside shard_map

    lrn = make_learner(tr.loop.learner.config, tr.loop.learner.obs_spec, 2)
    lstate = jax.tree.map(lambda x: x[0], ls.learner_state)
    lstate = lstate.replace(
        actor_params=jax.tree.map(lambda p: p + 0.3, lstate.actor_params),
        target_actor_params=jax.tree.map(lambda p: p + 0.3, lstate.target_actor_params),
    )
    r, _ = lrn.act(lstate, d.obs, d.base_action, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(r)[d.obs[:, 7] == 0], 0.0)
    assert np.abs(np.asarray(r)[d.obs[:, 7] == 1]).max() > 1e-4
    batch = jax.tree.map(jnp.asarray, d)
    moved = lstate.replace(
        target_actor_params=jax.tree.map(
            lambda p: -p,  # r' flips sign
            lstate.target_actor_params,
        )
    )
    y1 = np.asarray(lrn.td_target(lstate, batch, jax.random.PRNGKey(1), 0.0))
    y2 = np.asarray(lrn.td_target(moved, batch, jax.random.PRNGKey(1), 0.0))
    still = (d.next_obs[:, 7] == 0) | (d.nonterminal == 0)
    np.testing.assert_allclose(y1[still], y2[still], atol=1e-6)
    assert np.abs(y1 - y2)[~still].max() > 1e-5
    summary = train_residual(tr, str(tmp_path), progress=False, task_name="PointReach")
    assert summary["complete"] and summary["final"]["pooled"]["episodes"] == CFG.eval_episodes
    with pytest.raises(ValueError, match="residual.hold"):
        CFG.replace(learner=dataclasses.replace(LEARNER, residual_mask=True))


def test_a_rescore_names_what_changed():
    from resfit_jax.sim.report import rescore_differences

    pooled = {
        "episodes": 200,
        "base_success_rate": 0.5,
        "success_rate": 0.6,
        "fixed": 30,
        "broken": 10,
    }
    recorded = {"pooled": pooled, "last": {"pooled": pooled}}
    assert rescore_differences(recorded, recorded) == []
    new = {
        "pooled": dict(pooled, success_rate=0.605, fixed=31),
        "last": {"pooled": dict(pooled, broken=11)},
    }
    assert rescore_differences(recorded, new) == [
        "pooled.success_rate: 0.6 -> 0.605",
        "pooled.fixed: 30 -> 31",
        "last.broken: 10 -> 11",
    ]
