"""Multi-device checks run in a subprocess (the device count is fixed when JAX starts):

    python tests/sharding_worker.py update                     # sharded update == global update
    python tests/sharding_worker.py loop OUT                   # 2 devices: chunks, resume
    python tests/sharding_worker.py host PROCESS_ID PORT OUT   # one process of a 2-host run

Each prints one JSON line of figures that tests/test_sharding.py asserts on.
"""

import dataclasses
import json
import os
import sys

MODE = sys.argv[1]
DEVICES = {"update": 4, "loop": 2, "host": 1}[MODE]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

from resfit_jax import sharding  # noqa: E402

if MODE == "host":
    sharding.initialize_distributed(f"127.0.0.1:{sys.argv[3]}", 2, int(sys.argv[2]))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from resfit_jax.run.runtime import enable_compilation_cache  # noqa: E402

enable_compilation_cache()


def max_diff(a, b) -> float:
    from resfit_jax.run.checkpointing import to_storable

    d = jax.tree.map(
        lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        if np.size(x)
        else 0.0,
        to_storable(a),
        to_storable(b),
    )
    return max(jax.tree.leaves(d))


def update_check() -> dict:
    """A sharded update (and critic warm-up) of the global batch against the plain one."""
    from test_residual_td3 import ACT, CFG, OBS, make_batch

    from resfit_jax.agents.residual_td3 import make_learner

    assert CFG.target_noise and CFG.exploration_std > 0  # per-sample noise is drawn
    plain = make_learner(CFG, OBS, ACT)
    sharded = make_learner(CFG, OBS, ACT, axis_name=sharding.GRAD_AXES)
    state = plain.init(jax.random.key(0))
    on, off = make_batch(jax.random.key(1), batch=16), make_batch(jax.random.key(2), batch=8)
    for _ in range(2):  # a state whose actor and targets have moved
        state, _ = jax.jit(plain.update)(state, on, off)
    out = {}
    for n in (2, 4):  # meshes over the first 2 and all 4 devices
        mesh = sharding.make_mesh(data=n)
        # the global batch of a sharded update: [shard 0's online, shard 0's demos, shard 1's
        # ...]
        part = lambda x, i, b: x[:, i * b // n : (i + 1) * b // n]
        joined = jax.tree.map(
            lambda a, b: jnp.concatenate(
                [jnp.concatenate([part(a, i, 16), part(b, i, 8)], axis=1) for i in range(n)], axis=1
            ),
            on,
            off,
        )
        for method in ("update", "critic_warmup"):
            ref, m_ref = jax.jit(getattr(plain, method))(state, joined, None)
            got, m_got = sharding.sharded_update(sharded, mesh, method)(state, on, off)
            out[f"{method}_{n}"] = max_diff(ref, got)
            out[f"{method}_loss_{n}"] = abs(
                float(m_ref["critic_loss"]) - float(m_got["critic_loss"])
            )
            out[f"{method}_moved_{n}"] = max_diff(ref.critic_params, state.critic_params)
    return out


_DEMOS = []


def make(cfg, seeds=(0, 1)):
    from test_trainer import (
        TASK,
        FunctionBase,
        biased_base_action,
        collect_episodes,
        envs,
        make_rollout,
    )

    from resfit_jax.sim.trainer import make_trainer

    if not _DEMOS:
        expert = envs.make_expert("PointReach", TASK, envs.ExpertStyle())
        _DEMOS.append(collect_episodes(make_rollout(TASK, expert.init, expert.act), 12, 12)[0])
    return make_trainer(TASK, FunctionBase(biased_base_action, 2), _DEMOS[0], cfg, list(seeds))


def chunks(trainer):
    state = trainer.init()
    state, stats = trainer.warmup(state)
    state, _ = trainer.critic_warmup(state, trainer.offline)
    state, metrics = trainer.train(state, trainer.offline)
    return state, stats, metrics


def loop_check(out_dir: str) -> dict:
    from test_trainer import CFG

    from resfit_jax.agents.residual_td3 import make_learner
    from resfit_jax.sim.trainer import train_residual

    two = dataclasses.replace(CFG, shards=2, total_env_steps=128, eval_episodes=4)
    on_one, on_two = make(two), make(dataclasses.replace(two, mesh=(2, 1)))
    a, sa, ma = chunks(on_one)  # 2 shards as a named vmap on 1 device
    b, sb, mb = chunks(on_two)  # 2 shards on 2 devices
    res = {
        "devices": jax.device_count(),
        "placed": len(b.replay_state.data.obs.sharding.device_set),
        "replay_shape": list(b.replay_state.data.obs.shape),
        "chunk_diff": max_diff(a, b),
        "metric_diff": max_diff(ma, mb),
        "episodes": np.asarray(sb["episodes"]).tolist(),
        "critic_steps": np.asarray(b.learner_state.critic_steps).tolist(),
    }
    # one shard through the layout == the plain seed-vmapped loop (the code before sharding)
    single = make(CFG)
    loop = single.loop
    plain = dataclasses.replace(
        loop, learner=make_learner(CFG.learner, loop.learner_obs_spec, loop.task.action_size)
    )
    train = jax.jit(
        jax.vmap(lambda ls, off: plain.train(ls, off, CFG.steps_per_chunk), in_axes=(0, None))
    )
    state = single.warmup(single.init())[0]
    ref, _ = train(jax.tree.map(jnp.copy, state), single.offline)
    got, _ = single.train(state, single.offline)
    res["single_diff"] = max_diff(ref, got)
    # seeds as the second mesh axis: seed 0 on one device, seed 1 on the other
    c, _, _ = chunks(make(dataclasses.replace(CFG, mesh=(1, 2))))
    res["seed_mesh_diff"] = max_diff(chunks(single)[0], c)
    res["seed_placed"] = len(jax.tree.leaves(c.learner_state.critic_params)[0].sharding.device_set)
    # resume on another device count: 2 shards started on 2 devices, continued on 1
    full = train_residual(on_two, os.path.join(out_dir, "full"), progress=False)
    part = os.path.join(out_dir, "part")
    train_residual(on_two, part, progress=False, stop_at_env_steps=64)
    resumed = train_residual(on_one, part, resume=True, progress=False)
    res["resume_diff"] = max_diff(full["loop_state"], resumed["loop_state"])
    res["resume_success"] = [
        full["final"]["pooled"]["success_rate"],
        resumed["final"]["pooled"]["success_rate"],
    ]
    try:
        train_residual(single, part, resume=True, progress=False)
        res["shards_error"] = ""
    except ValueError as e:
        res["shards_error"] = str(e)
    return res


def host_check(out_dir: str) -> dict:
    """One of two processes: a 2-shard run over both hosts' devices, stopped at its first
    checkpoint after training, then resumed to the end."""
    from test_trainer import CFG

    from resfit_jax.sim.trainer import train_residual

    cfg = dataclasses.replace(CFG, mesh=(2, 1), total_env_steps=64, eval_every=32, eval_episodes=4)
    trainer = make(cfg)
    first = train_residual(trainer, out_dir, progress=False, stop_at_env_steps=32)
    steps = sorted(int(s) for s in os.listdir(os.path.join(out_dir, "checkpoints")) if s.isdigit())
    done = train_residual(trainer, out_dir, resume=True, progress=False)
    ls = done["loop_state"]
    return {
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "local": jax.local_device_count(),
        "first_complete": bool(first["complete"]),
        "complete": bool(done["complete"]),
        "checkpoints": steps,
        "critic_steps": np.asarray(ls.learner_state.critic_steps).tolist(),
        "success": done["final"]["pooled"]["success_rate"],
    }


if __name__ == "__main__":
    result = {
        "update": update_check,
        "loop": lambda: loop_check(sys.argv[2]),
        "host": lambda: host_check(sys.argv[4]),
    }[MODE]()
    print("RESULT " + json.dumps(result), flush=True)
