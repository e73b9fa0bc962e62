"""Bad input, one case per row: each must fail with the right error type and a message that
names the offending flag, field or file (never a raw KeyError, JSONDecodeError or XLA error).

Areas: script flags (subprocess), config fields, data files, run checkpoints, exported and
checkpointed bases, the learner API, host-callback bases, the robot link and journal."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax.data.rlds import Episode, check_compatible, read_episodes, write_episodes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------ script flags
CLI = [
    (["experiments.train", "--config.replay.utdd=3"], "has no field 'utdd'"),
    (["experiments.train", "--config.learner.utd=3"], "has no field 'utd'"),
    (["experiments.train", "--config.num_envs=abc"], "num_envs=abc': expected int"),
    (["experiments.train", "--config.learner.actor_lr=nan"], "actor_lr"),
    (["experiments.train", "--task=Nope"], "No residual-training preset for task 'Nope'"),
    (["experiments.train", "--seeds=0"], "--seeds must be >= 1"),
    (["experiments.train", "--method=ppo", "--scale=paper"], "choose from cpu, accelerator"),
    (["experiments.train", "--config.residual.hold=maybe"], "expected true/false"),
    (
        ["experiments.train", "--task=PointReach", "--base=/nonexistent/base"],
        "No base at /nonexistent/base",
    ),
    (
        ["experiments.train", "--resume", "--out=/nonexistent/run"],
        "/nonexistent/run holds no run to resume",
    ),
    (
        ["experiments.train", "--config.residual.decision_steps=3", "--config.residual.hold=true"],
        "turn hold and offset_bound off",
    ),
    (["experiments.train", "--recipe=chunk", "--method=rlpd"], "a ResFiT recipe; drop it"),
    (["experiments.make_demos", "--episodes=0"], "episodes and num_envs must be >= 1"),
    (["studies.ablate", "--factor=base_phase"], "expected FIELD=V1,V2"),
    (["studies.failure_modes", "--run=/nonexistent/run"], "holds no config.json"),
    (["studies.calibration"], "--run is required: a semi-MDP residual run directory"),
    (["studies.calibration", "--run=/nonexistent/run"], "holds no config.json"),
    (["experiments.run_robot"], "Pass --address=host:port"),
    (["experiments.train_bc", "--task=Nope"], "Unknown task 'Nope'"),
    (["experiments.train_bc", "--steps=0"], "steps must be >= 1"),
    (["experiments.run_robot", "--spawn_sim", "--base=/nonexistent/base"], "No base at"),
    (
        ["experiments.run_robot", "--spawn_sim", "--ab_rounds=4", "--evaluate=eval"],
        "--ab_rounds takes a number of rounds >= 1 and replaces --evaluate",
    ),
    (
        ["experiments.run_robot", "--spawn_sim", "--ab_rounds=4", "--ab_scenes=/nonexistent/s"],
        "--ab_scenes: [Errno 2]",
    ),
    (["experiments.plot", "/nonexistent/run"], "/nonexistent/run is not a run directory"),
    (["experiments.distill"], "Pass --run=<a finished ResFiT or residual-PPO run directory>"),
    (["studies.distill_chain", "--out=/tmp/x"], "Pass --round1=<a finished multi-seed"),
    (["experiments.distill", "--run=/nonexistent/run"], "/nonexistent/run holds no config.json"),
    (["experiments.distill", "--run=r", "--dropout=1.5"], "--dropout must be in [0, 1)"),
    (["experiments.render_rollout", "--out=v.avi"], "--out=v.avi: use a .mp4 or .gif"),
    (["studies.sample_efficiency", "--sweep=0.9,x"], "expected success rates such as"),
    (["studies.sample_efficiency", "--sweep=0.9,90"], "not all success rates in (0, 1]"),
]


@pytest.mark.parametrize("argv,message", CLI, ids=[" ".join(a[1:]) for a, _ in CLI])
def test_script_flags(argv, message):
    r = subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert message in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------------------------ config fields
def _configs():
    from resfit_jax.agents.residual_td3 import ResidualTD3Config
    from resfit_jax.bc.networks import BCConfig
    from resfit_jax.replay import ReplayConfig
    from resfit_jax.robot.config import RobotTrainConfig
    from resfit_jax.robot.loop import LoopConfig
    from resfit_jax.sim.config import ResidualOptions, TrainConfig

    return [
        (lambda: ResidualTD3Config(tau=0.0), "tau must be in (0, 1]"),
        (lambda: ResidualTD3Config(critic_lr=float("inf")), "critic_lr must be a finite"),
        (lambda: ResidualTD3Config(exploration_std=-0.1), "exploration_std must be >= 0"),
        (lambda: ResidualTD3Config(gate_rule="max"), "gate_rule"),
        (lambda: ResidualTD3Config(actor_hidden_dims=(0,)), "hidden dims"),
        (lambda: ReplayConfig(gamma=1.5), "gamma must be in (0, 1]"),
        (lambda: ReplayConfig(capacity=0), "capacity must be >= 1"),
        (lambda: ReplayConfig(batch_size=1), "batch_size must be >= 2"),
        (lambda: TrainConfig(num_envs=0), "num_envs must be >= 1"),
        (lambda: TrainConfig(warmup_noise=float("nan")), "warmup_noise must be a finite"),
        (lambda: ResidualOptions(exploration_std_range=(0.1, 0.0)), "exploration_std_range"),
        (lambda: TrainConfig(obs_min_std=0.0), "obs_min_std must be > 0"),
        (lambda: LoopConfig(control_hz=0.0), "control_hz must be > 0"),
        (lambda: RobotTrainConfig(min_replay=0), "min_replay must be >= 1"),
        (lambda: BCConfig(dropout=2.0), "dropout must be in [0, 1]"),
        (lambda: BCConfig(lr=float("nan")), "lr must be a finite"),
    ]


@pytest.mark.parametrize("case", range(16))
def test_config_fields(case):
    build, message = _configs()[case]
    with pytest.raises(
        ValueError,
        match=message.replace("(", r"\(")
        .replace(")", r"\)")
        .replace("[", r"\[")
        .replace("]", r"\]"),
    ):
        build()


TYPE_CASES = [
    ("ReplayConfig", {"batch_size": 256.0}, "batch_size must be int (got 256.0 of type float)"),
    ("ResidualTD3Config", {"actor_hidden_dims": (True, 8)}, "actor_hidden_dims must be tuple"),
    ("ResidualTD3Config", {"critic_hidden_dims": 8}, "critic_hidden_dims must be tuple"),
    ("ResidualOptions", {"exploration_std_range": 0.1}, "exploration_std_range must be tuple"),
    ("ResidualTD3Config", {"actor_lr": "fast"}, "actor_lr must be float (got 'fast'"),
    ("TrainConfig", {"num_envs": True}, "num_envs must be int (got True of type bool)"),
    ("ResidualOptions", {"decision_steps": 2.0}, "decision_steps must be int"),
    ("ResidualOptions", {"mc_bound": "yes"}, "mc_bound must be bool"),
    ("LoopConfig", {"control_hz": "20"}, "control_hz must be float (got '20'"),
    ("BCConfig", {"steps": 100.0}, "steps must be int"),
]


@pytest.mark.parametrize("name,kw,message", TYPE_CASES, ids=[str(k) for _, k, _ in TYPE_CASES])
def test_config_fields_check_their_types(name, kw, message):
    """A float where an int is needed, a bool in hidden sizes, a scalar where a pair is
    needed, a string for a number or a flag: refused by name, never rounded or accepted."""
    from resfit_jax.agents.residual_td3 import ResidualTD3Config
    from resfit_jax.bc.networks import BCConfig
    from resfit_jax.replay import ReplayConfig
    from resfit_jax.robot.loop import LoopConfig
    from resfit_jax.sim.config import ResidualOptions, TrainConfig

    classes = [ResidualTD3Config, BCConfig, ReplayConfig, LoopConfig, ResidualOptions, TrainConfig]
    cls = {c.__name__: c for c in classes}[name]
    with pytest.raises(ValueError, match=re.escape(f"{name}: {message}")):
        cls(**kw)


# ------------------------------------------------------------------------------ data files
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    t = 5
    ep = Episode.from_rollout(np.zeros((t + 1, 4), np.float32), np.zeros((t, 2), np.float32), True)
    return write_episodes(str(tmp_path_factory.mktemp("ds")), [ep, ep])


def _copy(src, tmp_path):
    dst = str(tmp_path / "copy")
    shutil.copytree(src, dst)
    return dst


def test_dataset_missing_directory():
    with pytest.raises(FileNotFoundError, match="/no/such/dataset is not a tfds dataset"):
        read_episodes("/no/such/dataset")


def test_dataset_without_features_file(dataset, tmp_path):
    d = _copy(dataset, tmp_path)
    os.remove(os.path.join(d, "features.json"))
    with pytest.raises(FileNotFoundError, match="has no features.json"):
        read_episodes(d)


def test_dataset_without_data_files(dataset, tmp_path):
    d = _copy(dataset, tmp_path)
    for f in os.listdir(d):
        if ".array_record" in f:
            os.remove(os.path.join(d, f))
    with pytest.raises(FileNotFoundError, match="no array_record data files"):
        read_episodes(d)


def test_dataset_with_damaged_info(dataset, tmp_path):
    d = _copy(dataset, tmp_path)
    with open(os.path.join(d, "dataset_info.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="dataset_info.json is not valid JSON"):
        read_episodes(d)


def test_dataset_split_that_does_not_exist(dataset):
    with pytest.raises(ValueError, match="cannot open .* split 'test': Unknown split"):
        read_episodes(dataset, split="test")


def test_dataset_split_with_no_episodes(dataset, tmp_path):
    d = _copy(dataset, tmp_path)
    path = os.path.join(d, "dataset_info.json")
    info = json.load(open(path))
    for split in info["splits"]:
        split["shardLengths"] = ["0" for _ in split["shardLengths"]]
    json.dump(info, open(path, "w"))
    with pytest.raises(ValueError, match="split 'train' holds no episodes; write the demos again"):
        read_episodes(d)


def test_a_broken_metrics_line_is_skipped_and_named(tmp_path, capsys):
    from resfit_jax.run.logger import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "env_steps": 1}\n[1, 2]\n{"kind": "eval", "env\n')
    rows = read_metrics(str(tmp_path))
    assert rows == [{"kind": "train", "env_steps": 1}]
    assert "2 line(s) are not metrics rows and were skipped (line 2, 3)" in capsys.readouterr().err


def test_dataset_for_another_task(dataset):
    with pytest.raises(ValueError, match="PickPlace"):
        check_compatible(read_episodes(dataset), 28, 7, "PickPlace")


def test_normalizer_from_nan_data():
    from resfit_jax.normalization import Normalizer

    with pytest.raises(ValueError, match=r"NaN/inf \(first \[row, dim\] indices"):
        Normalizer.fit(np.zeros((3, 2)), np.array([[0.0, np.nan]]), 0.1)


def test_no_demo_episodes():
    from resfit_jax.replay.demos import pad_episodes

    with pytest.raises(ValueError, match="no demo episodes"):
        pad_episodes([])


def test_writing_over_a_dataset_is_refused(dataset):
    ep = read_episodes(dataset)[0]
    with pytest.raises(FileExistsError, match="already exists"):
        write_episodes(os.path.dirname(os.path.dirname(dataset)), [ep])


# ------------------------------------------------------------------------------ checkpoints
def test_run_checkpoint_missing(tmp_path):
    from resfit_jax.run.checkpointing import RunCheckpointer

    with pytest.raises(FileNotFoundError, match="No run checkpoint under"):
        RunCheckpointer(str(tmp_path / "empty")).restore({"x": jnp.zeros(2)})


def test_run_checkpoint_with_another_shape(tmp_path):
    from resfit_jax.run.checkpointing import RunCheckpointer

    ckpt = RunCheckpointer(str(tmp_path / "c"))
    ckpt.save(1, {"x": jnp.zeros(2)}, {})
    with pytest.raises(ValueError, match=r"could not be read|does not match this configuration"):
        ckpt.restore({"x": jnp.zeros(3)})


# ------------------------------------------------------------------------------ bases
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from resfit_jax.bc.export import export_base

    d = str(tmp_path_factory.mktemp("export"))
    predict = lambda params, obs: jnp.repeat(obs[:, None, :2], 3, axis=1) * params
    export_base(d, predict, jnp.ones(()), obs_dim=4, action_dim=2, chunk_size=3)
    return d


def test_exported_base_missing(tmp_path):
    from resfit_jax.base.policy import load_exported_base

    with pytest.raises(FileNotFoundError, match="base.json is missing"):
        load_exported_base(str(tmp_path))


def test_exported_base_with_damaged_json(exported, tmp_path):
    from resfit_jax.base.policy import load_exported_base

    d = _copy(exported, tmp_path)
    with open(os.path.join(d, "base.json"), "w") as f:
        f.write('{"obs_dim": 4')
    with pytest.raises(ValueError, match="base.json is damaged"):
        load_exported_base(d)


@pytest.mark.parametrize(
    "field,value", [("obs_dim", 4.5), ("action_dim", None), ("chunk_size", "3"), ("obs_dim", 0)]
)
def test_exported_base_with_odd_sizes(exported, tmp_path, field, value):
    import json

    from resfit_jax.base.policy import load_exported_base

    d = _copy(exported, tmp_path)
    path = os.path.join(d, "base.json")
    meta = json.load(open(path))
    meta[field] = value
    json.dump(meta, open(path, "w"))
    with pytest.raises(ValueError, match=f"damaged .*sizes must be positive integers.*{field}"):
        load_exported_base(d)


def test_exported_base_whose_artifact_is_a_directory(exported, tmp_path):
    import shutil

    from resfit_jax.base.policy import load_exported_base

    d = _copy(exported, tmp_path)
    os.remove(os.path.join(d, "base.jaxexport"))
    os.makedirs(os.path.join(d, "base.jaxexport"))
    with pytest.raises(FileNotFoundError, match="base.jaxexport is a directory, not a file"):
        load_exported_base(d)
    shutil.rmtree(d)


def test_exported_base_with_damaged_artifact(exported, tmp_path):
    from resfit_jax.base.policy import load_exported_base

    d = _copy(exported, tmp_path)
    with open(os.path.join(d, "base.jaxexport"), "wb") as f:
        f.write(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot deserialize"):
        load_exported_base(d)


def test_exported_base_for_another_task(exported):
    from resfit_jax.base.policy import load_exported_base

    with pytest.raises(ValueError, match="expects observations of size 4.*size is 28"):
        load_exported_base(exported, obs_dim=28)


def test_base_checkpoint_with_damaged_info(tmp_path):
    from resfit_jax.bc.frozen import load_base

    with open(tmp_path / "base_info.json", "w") as f:
        json.dump({"obs_dim": 4}, f)
    with pytest.raises(ValueError, match="base_info.json is damaged"):
        load_base(str(tmp_path))


def test_base_checkpoint_without_parameters(tmp_path):
    from resfit_jax.bc.frozen import load_base
    from resfit_jax.bc.networks import BCConfig

    info = {
        "obs_dim": 4,
        "action_dim": 2,
        "normalizer": {},
        "config": BCConfig.cpu(policy="mlp").to_dict(),
    }
    with open(tmp_path / "base_info.json", "w") as f:
        json.dump(info, f)
    with pytest.raises(FileNotFoundError, match="no saved parameters"):
        load_base(str(tmp_path))


def test_open_base_on_an_empty_directory(tmp_path):
    from resfit_jax.bc.frozen import open_base

    with pytest.raises(FileNotFoundError, match="No base at"):
        open_base(str(tmp_path), 4, 2)


# ------------------------------------------------------------------------------ learner API
@pytest.fixture(scope="module")
def learner():
    from resfit_jax.agents.residual_td3 import ResidualTD3Config, make_learner

    lrn = make_learner(
        ResidualTD3Config(actor_hidden_dims=(8,), critic_hidden_dims=(8,), num_critics=2), 3, 2
    )
    return lrn, lrn.init(jax.random.key(0))


def test_learner_act_with_the_wrong_action_size(learner):
    lrn, state = learner
    with pytest.raises(ValueError, match="does not match the learner's action_dim 2"):
        lrn.act(state, jnp.zeros((4, 3)), jnp.zeros((4, 5)), None)


def test_learner_act_with_the_wrong_observation_size(learner):
    lrn, state = learner
    with pytest.raises(ValueError, match=r"observation has shape \(4, 7\), expected \(4, 3\)"):
        lrn.act(state, jnp.zeros((4, 7)), jnp.zeros((4, 2)), None)


def test_learner_act_on_a_nan_observation_masks_the_residual(learner):
    lrn, state = learner
    state = state.replace(actor_params=jax.tree.map(lambda p: p + 0.3, state.actor_params))
    obs = jnp.zeros((3, 3)).at[1, 0].set(jnp.nan)
    a_b = jnp.full((3, 2), 0.1)
    r, aux = jax.jit(lrn.act, static_argnames="deterministic")(
        state, obs, a_b, None, deterministic=True
    )
    assert np.asarray(aux["obs_finite"]).tolist() == [True, False, True]
    assert np.all(np.isfinite(np.asarray(r))) and np.all(np.asarray(r[1]) == 0.0)
    np.testing.assert_array_equal(aux["action"][1], a_b[1])


def test_learner_act_on_a_nan_base_action_is_refused_or_masked(learner):
    from resfit_jax.agents.residual_td3 import ResidualTD3Config, make_learner

    lrn, state = learner
    a_b = jnp.full((3, 2), 0.1).at[2, 1].set(jnp.inf)
    with pytest.raises(ValueError, match=r"base action is NaN or inf in batch rows \[2\]"):
        lrn.act(state, jnp.zeros((3, 3)), a_b, None, deterministic=True)  # eager: refused
    with pytest.raises(Exception, match="base action is NaN or inf"):  # jit: host callback
        r, _ = jax.jit(lrn.act, static_argnames="deterministic")(
            state, jnp.zeros((3, 3)), a_b, None, deterministic=True
        )
        jax.block_until_ready(r)
    # unchecked (the loops' presets check on the host): that row's residual is 0, flagged
    quiet = make_learner(
        ResidualTD3Config(
            actor_hidden_dims=(8,), critic_hidden_dims=(8,), num_critics=2, check_finite=False
        ),
        3,
        2,
    )
    params = jax.tree.map(lambda p: p + 0.3, state.actor_params)
    r, aux = jax.jit(quiet.act, static_argnames="deterministic")(
        state.replace(actor_params=params), jnp.zeros((3, 3)), a_b, None, deterministic=True
    )
    assert np.asarray(aux["base_finite"]).tolist() == [True, True, False]
    assert np.all(np.asarray(r[2]) == 0.0) and np.all(np.asarray(r[:2]) != 0.0)


def test_a_nan_base_action_on_the_robot_stops_it_and_sends_nothing():
    import sys

    from resfit_jax.robot.loop import LoopConfig, run_episode
    from resfit_jax.robot.operator import ScriptedLabeller
    from resfit_jax.robot.safety import SafetyLimits

    sys.path.insert(0, os.path.dirname(__file__))
    from robot_worker import PointRobot

    class NanBase:
        def begin(self):
            pass

        def base_action(self, obs):
            return np.array([0.0, np.nan], np.float32)

        def act(self, obs, a_b):
            return np.zeros(2, np.float32), np.zeros(2, np.float32)  # would hide the NaN

    robot = PointRobot()
    lim = SafetyLimits(np.array([-1.0, -1.0]), np.array([1.0, 1.0]), 0.3, (0, 1))
    rec = run_episode(
        robot,
        NanBase(),
        ScriptedLabeller(lambda e, t, o: None),
        lim,
        LoopConfig(max_episode_steps=5),
    )
    assert robot.sent == [] and robot.stops == 1
    assert "base policy returned a non-finite action at step 0 (entries [1])" in rec.error


@pytest.mark.parametrize(
    "args,error,message",
    [
        (({"actor_lr": 1e-3}, 3, 2), TypeError, "make_learner needs a ResidualTD3Config"),
        ((None, 0, 2), ValueError, "observation dimension must be >= 1, got 0"),
        ((None, 3, 2.5), ValueError, "action_dim must be an int (got 2.5)"),
        ((None, 3, 0), ValueError, "action_dim must be >= 1, got 0"),
    ],
    ids=["config dict", "obs 0", "action 2.5", "action 0"],
)
def test_make_learner_with_bad_arguments(args, error, message):
    from resfit_jax.agents.residual_td3 import ResidualTD3Config, make_learner

    config, obs, act = args
    with pytest.raises(error, match=re.escape(message)):
        make_learner(config or ResidualTD3Config(), obs, act)


def test_learner_without_a_key_where_it_draws_random_numbers(learner):
    lrn, state = learner
    with pytest.raises(ValueError, match=r"expected a PRNG key .* got 123"):
        lrn.init(123)
    with pytest.raises(ValueError, match="expected a PRNG key .* got None"):
        lrn.act(state, jnp.zeros((2, 3)), jnp.zeros((2, 2)), None)  # exploration needs one
    lrn.act(state, jnp.zeros((2, 3)), jnp.zeros((2, 2)), None, deterministic=True)  # no key: ok


def test_learner_init_with_a_normalizer_of_another_size(learner):
    from resfit_jax.normalization import Normalizer

    lrn, _ = learner
    with pytest.raises(ValueError, match="observation size 5 does not match"):
        lrn.init(jax.random.key(0), Normalizer.identity(5, 2))


def test_learner_with_pixel_observations():
    from resfit_jax.agents.residual_td3 import ResidualTD3Config, make_learner

    # camera fields are uint8 [H, W, C] (see test_vision.py); float images are refused
    with pytest.raises(ValueError, match="must be uint8"):
        make_learner(
            ResidualTD3Config(), {"pixels": jax.ShapeDtypeStruct((8, 8, 3), jnp.float32)}, 2
        )
    with pytest.raises(ValueError, match="float vectors"):
        make_learner(ResidualTD3Config(), {"grid": jax.ShapeDtypeStruct((8, 8), jnp.uint8)}, 2)


def test_learner_without_actions():
    from resfit_jax.agents.residual_td3 import ResidualTD3Config, make_learner

    with pytest.raises(ValueError, match="action_dim must be >= 1"):
        make_learner(ResidualTD3Config(), 3, 0)


def test_learner_update_not_a_transition(learner):
    lrn, state = learner
    with pytest.raises(TypeError, match="must be a replay.Transition"):
        lrn.update(state, {"obs": 1}, None)


# ------------------------------------------------------------------------------ host bases
def test_host_base_with_the_wrong_shape():
    from resfit_jax.base.callback import host_callback_base

    with pytest.raises(ValueError, match=r"returned shape \(2, 3\).*expected \(2, 2\)"):
        host_callback_base(lambda x: np.zeros((x.shape[0], 3)), obs_dim=4, action_dim=2)


def test_host_base_with_an_integer_dtype():
    from resfit_jax.base.callback import host_callback_base

    with pytest.raises(ValueError, match="dtype int"):
        host_callback_base(lambda x: np.zeros((x.shape[0], 2), np.int32), obs_dim=4, action_dim=2)


class _Flaky:
    """Fine at construction, then raises (or returns NaN) from call ``after`` on."""

    def __init__(self, after, nan=False):
        self.calls, self.after, self.nan = 0, after, nan

    def __call__(self, x):
        self.calls += 1
        if self.calls > self.after:
            if self.nan:
                return np.full((x.shape[0], 2), np.nan, np.float32)
            raise OSError("inference server went away")
        return np.zeros((x.shape[0], 2), np.float32)


@pytest.mark.parametrize("nan", [False, True])
def test_host_base_failing_mid_rollout_names_the_base(nan):
    from resfit_jax.base.callback import host_callback_base

    base = host_callback_base(_Flaky(after=2, nan=nan), obs_dim=4, action_dim=2)
    step = jax.jit(base.step)
    state = base.init_state(3)
    a, state = step(state, jnp.zeros((3, 4)))
    jax.block_until_ready(a)
    with pytest.raises(
        Exception, match="host base '_Flaky'" + (".*NaN" if nan else ".*inference server")
    ):
        jax.block_until_ready(step(state, jnp.zeros((3, 4)))[0])


# ------------------------------------------------------------------------------ robot side
def test_robot_key_missing(monkeypatch):
    from resfit_jax.robot.sim_server import KEY_ENV, read_key

    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ValueError, match="RESFIT_ROBOT_KEY"):
        read_key(None)


def test_robot_key_file_empty(tmp_path):
    from resfit_jax.robot.sim_server import read_key

    (tmp_path / "key").write_text("\n")
    with pytest.raises(ValueError, match="No robot key"):
        read_key(str(tmp_path / "key"))


def test_safety_limits_inverted():
    from resfit_jax.robot.safety import SafetyLimits

    with pytest.raises(ValueError, match="low <= high"):
        SafetyLimits(np.array([1.0]), np.array([0.0]), 0.1)


def test_robot_address_malformed():
    from resfit_jax.robot.link import RemoteRobot

    with pytest.raises(ValueError, match="host:port"):
        RemoteRobot("localhost", b"k")


def test_robot_server_needs_a_key():
    from resfit_jax.robot.link import RobotServer

    with pytest.raises(ValueError, match="authkey is required"):
        RobotServer(object(), b"")


def test_damaged_journal_entry(tmp_path):
    from resfit_jax.robot.journal import Journal

    journal = Journal(str(tmp_path / "journal"))
    ep = Episode.from_rollout(np.zeros((4, 2), np.float32), np.zeros((3, 1), np.float32), True)
    entry = journal.write(ep, {"base_action": np.zeros((4, 1), np.float32)}, {"label": "success"})
    os.remove(os.path.join(entry.path, "extras.npz"))
    with pytest.raises((ValueError, FileNotFoundError), match=os.path.basename(entry.path)):
        journal.read(journal.entries()[0])


@pytest.mark.parametrize(
    "argv,what",
    [
        (["experiments.quickstart"], "quick start"),
        (["experiments.make_demos", "--task=PointReach", "--episodes=2"], "demo collection"),
    ],
)
def test_scripts_refuse_a_directory_another_process_writes(argv, what, tmp_path):
    """Two quick starts (or demo collections) on one --out: the second stops in one line,
    naming the holder, before writing anything."""
    from resfit_jax.run.locks import RunLock

    out = str(tmp_path / "out")
    with RunLock(out, what):
        r = subprocess.run(
            [sys.executable, "-m", *argv, f"--out={out}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert r.returncode == 2 and f"in use by another {what} (pid {os.getpid()}" in r.stderr
    assert "Traceback" not in r.stderr and os.listdir(out) == [".lock"]


@pytest.mark.parametrize("kind", ["file", "read-only", "loop", "lock is a directory"])
def test_an_unusable_run_directory_is_named(tmp_path, kind):
    from resfit_jax.run.locks import RunLock, RunLockedError

    out = tmp_path / "out"
    if kind == "file":
        out.write_text("not a directory")
        want = "exists and is not a directory"
    elif kind == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes read-only directories")
        os.makedirs(out)
        os.chmod(out, 0o500)
        want = "not writable"
    elif kind == "loop":
        os.symlink(tmp_path / "b", tmp_path / "a")
        os.symlink(tmp_path / "a", tmp_path / "b")
        out = tmp_path / "a" / "run"
        want = "loops through symbolic links"
    else:
        os.makedirs(out / ".lock")
        want = "lock path .* is a directory"
    with pytest.raises(RunLockedError, match=f"cannot be used as a run directory: .*{want}"):
        RunLock(str(out)).acquire()


def test_a_journal_path_that_is_a_file_is_named(tmp_path):
    from resfit_jax.robot.journal import Journal

    (tmp_path / "journal").write_text("x")
    with pytest.raises(ValueError, match="journal .* is a file, not a directory"):
        Journal(str(tmp_path / "journal"))


def test_a_host_base_failing_inside_a_compiled_step_raises_its_own_error():
    """A host-callback base that fails mid-rollout (a camera unplugged) reaches the caller
    of a jitted step as its own error type and message inside host_errors_surfaced (the
    run loops' wrapper), not as JAX's INTERNAL runtime error."""
    from resfit_jax.base.callback import host_callback_base, host_errors_surfaced

    calls = []

    def fn(x):
        calls.append(1)
        if len(calls) > 1:  # the construction check passes, the rollout fails
            raise KeyError("camera 3 unplugged")
        return np.zeros((x.shape[0], 2), np.float32)

    base = host_callback_base(fn, obs_dim=4, action_dim=2)
    step = jax.jit(lambda s, o: base.step(s, o))
    with pytest.raises(jax.errors.JaxRuntimeError):  # what JAX gives by itself
        jax.block_until_ready(step(base.init_state(3), jnp.zeros((3, 4))))
    with pytest.raises(KeyError, match="camera 3 unplugged"):
        with host_errors_surfaced():
            jax.block_until_ready(step(base.init_state(3), jnp.zeros((3, 4))))


# ------------------------------------------------------------------------- resume settings
@pytest.mark.parametrize(
    "change,named",
    [
        ({"seeds": [0, 1, 2]}, r"seeds: \[0\] -> \[0, 1, 2\]"),
        ({"task": "PegInsertion"}, "task: 'PickPlace' -> 'PegInsertion'"),
        ({"demos": "f" * 64}, "demos: another file"),
        ({"actor_lr": 1e-5}, "learner.actor_lr: 0.0001 -> 1e-05"),
    ],
    ids=["seeds", "task", "demos", "config"],
)
def test_resume_with_other_settings_names_them_and_keeps_the_checkpoint(tmp_path, change, named):
    """--resume whose seeds, task, demos or config differ from the run's is not reported as
    a damaged checkpoint: the message names each difference and says the checkpoint is fine."""
    from resfit_jax.agents.residual_td3 import ResidualTD3Config
    from resfit_jax.run.configs import to_dict
    from resfit_jax.sim.config import TrainConfig
    from resfit_jax.sim.progress import check_resume_settings

    cfg = TrainConfig(learner=ResidualTD3Config(actor_lr=1e-4))
    identity = {"base": "a" * 64, "demos": "b" * 64}
    saved = {"task": "PickPlace", "seeds": [0], "identity": identity, "config": to_dict(cfg)}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    check_resume_settings(str(tmp_path), cfg, [0], "PickPlace", identity)  # same: accepted
    now = dict(seeds=[0], task_name="PickPlace", identity=dict(identity))
    if "seeds" in change:
        now["seeds"] = change["seeds"]
    if "task" in change:
        now["task_name"] = change["task"]
    if "demos" in change:
        now["identity"]["demos"] = change["demos"]
    if "actor_lr" in change:
        cfg = TrainConfig(learner=ResidualTD3Config(actor_lr=change["actor_lr"]))
    with pytest.raises(ValueError, match=named) as err:
        check_resume_settings(str(tmp_path), cfg, now["seeds"], now["task_name"], now["identity"])
    assert "The checkpoint is fine" in str(err.value) and "damaged" not in str(err.value)
