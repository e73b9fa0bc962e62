"""Data parallelism over devices and hosts with JAX's own engine (Mesh, shard_map, collectives).

A run with ``shards`` data shards splits its E envs, their base state and n-step windows, and
its online replay N = ``shards`` ways. Each shard collects with its own E / N envs, writes to
its own replay (capacity C / N) and samples its own B / N of every batch locally; the learner
params are the same on every shard, and each update averages the gradients over the shards
(``mean_grads``), so one update is the update of the global batch of B. Seeds can be a second
mesh axis.

    mesh = make_mesh(data=2, seed=1)                       # devices [data, seed]
    layout = Layout(mesh, shards=2, seeds=3)
    step = layout.chunk(local_fn)                          # jitted shard_map(vmap(local_fn))

Axes: ``DATA`` (mesh, across devices) and ``SHARDS`` (a named vmap over the shards one device
holds, ``shards / data`` of them) together are the gradient axes ``GRAD_AXES``; a learner
built with ``axis_name=GRAD_AXES`` averages over both. ``SEED`` splits the seeds.

Global state layout (leading axes): the learner state [S] (one per seed, replicated over
the data axis); every other leaf [N * S], shard-major (index n * S + s). With one shard the
layout is the plain seed-vmapped one, so single-device runs and their checkpoints are as
before, and they run through this same code with a mesh of one.

Randomness drawn per sample inside an update (target-policy noise) is drawn at the global
batch shape and sliced (``local_draw``): a sharded update equals the unsharded update of the
global batch [shard 0's samples, shard 1's samples, ...], up to float reduction order.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any
DATA, SHARDS, SEED = "data", "shards", "seed"
GRAD_AXES = (DATA, SHARDS)


# ------------------------------------------------------------------------ inside a shard
def _axes(axis_name) -> tuple:
    return (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)


def num_shards(axis_name) -> int | jax.Array:
    """The number of shards along ``axis_name`` (1 if None); use inside shard_map / vmap."""
    return 1 if axis_name is None else jax.lax.psum(1, _axes(axis_name))


def shard_index(axis_name) -> int | jax.Array:
    """This shard's linear index along ``axis_name`` (major axis first; 0 if None)."""
    if axis_name is None:
        return 0
    index = 0
    for name in _axes(axis_name):
        index = index * jax.lax.psum(1, name) + jax.lax.axis_index(name)
    return index


def local_draw(sample: Callable, key: jax.Array, shape: Sequence[int], axis_name) -> jax.Array:
    """``sample(key, shape)`` for this shard's [b, ...] part of a global batch [N * b, ...]:
    drawn at the global shape and sliced, so every sample gets the draw it would get unsharded.
    Without an axis it is ``sample(key, shape)``."""
    shape = tuple(shape)
    if axis_name is None:
        return sample(key, shape)
    n = num_shards(axis_name)
    full = sample(key, (n * shape[0],) + shape[1:])
    return jax.lax.dynamic_slice_in_dim(full, shard_index(axis_name) * shape[0], shape[0])


def mean_grads(grads: PyTree, axis_name) -> PyTree:
    """Gradients averaged over the shards (identity without an axis): the gradient of the
    mean loss over the global batch when every shard holds an equal part of it."""
    return grads if axis_name is None else jax.lax.pmean(grads, _axes(axis_name))


def reduce_across(metrics: dict, axis_name, sums: Sequence[str] = ()) -> dict:
    """Metrics of one shard -> the same on every shard: ``sums`` (counts) are summed,
    ``*_max`` / ``*_min`` take the max / min, ``nonfinite_mask`` is OR-ed, the rest averaged."""
    axes = _axes(axis_name)
    out = {}
    for k, v in metrics.items():
        if k in sums:
            out[k] = jax.lax.psum(v, axes)
        elif k == "nonfinite_mask":
            v = jnp.asarray(v)
            bits = jnp.arange(8 * v.dtype.itemsize, dtype=v.dtype)
            any_bit = jax.lax.pmax((v[..., None] >> bits) & 1, axes)  # OR, bit by bit
            out[k] = (any_bit << bits).sum(axis=-1).astype(v.dtype)
        elif k.endswith("_max"):
            out[k] = jax.lax.pmax(v, axes)
        elif k.endswith("_min"):
            out[k] = jax.lax.pmin(v, axes)
        else:
            out[k] = jax.lax.pmean(v, axes)
    return out


# ---------------------------------------------------------------------------- the mesh
def make_mesh(data: int = 1, seed: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A [data, seed] mesh over the first data * seed devices (all hosts' devices, in
    ``jax.devices()`` order). Axis types are Auto (MJX breaks under Explicit axes)."""
    devices = list(jax.devices() if devices is None else devices)
    need = int(data) * int(seed)
    if data < 1 or seed < 1:
        raise ValueError(f"mesh sizes must be >= 1 (got data={data}, seed={seed}).")
    if need > len(devices):
        hint = (
            " On a CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N before "
            "JAX is imported to get N host devices."
            if devices[0].platform == "cpu"
            else ""
        )
        raise ValueError(
            f"A mesh of data={data} x seed={seed} needs {need} devices; "
            f"{len(devices)} are visible ({devices[0].platform}).{hint}"
        )
    grid = np.asarray(devices[:need], dtype=object).reshape(int(data), int(seed))
    return Mesh(grid, (DATA, SEED), axis_types=(AxisType.Auto, AxisType.Auto))


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a run's seeds and data shards sit on a mesh (see the module docstring).

    shards: data shards N (a multiple of the mesh's data size; each device runs
    shards / data of them as a named vmap); seeds: S (a multiple of the mesh's seed size)."""

    mesh: Mesh
    shards: int
    seeds: int

    def __post_init__(self):
        d, m = self.data_devices, self.seed_devices
        errors = []
        if self.shards < 1 or self.shards % d:
            errors.append(
                f"shards ({self.shards}) must be a multiple of the mesh's data size ({d})"
            )
        if self.seeds % m:
            errors.append(
                f"the number of seeds ({self.seeds}) must be a multiple of the "
                f"mesh's seed size ({m})"
            )
        if m > 1 and self.shards != d:
            errors.append(
                "with seeds split over devices, use one shard per data device "
                f"(shards={self.shards}, data devices={d})"
            )
        if errors:
            raise ValueError("Layout: " + "; ".join(errors) + ".")

    @property
    def data_devices(self) -> int:
        return self.mesh.shape[DATA]

    @property
    def seed_devices(self) -> int:
        return self.mesh.shape[SEED]

    @property
    def per_device(self) -> int:
        return self.shards // self.data_devices

    # ------------------------------------------------------------------------- specs
    def spec(self, replicas: bool) -> P:
        """Leading-axis spec: replicas [N * S] over (data, seed); per seed [S] over seed."""
        return P((DATA, SEED)) if replicas else P(SEED)

    def state_specs(self, state: PyTree, learner_field: str = "learner_state") -> PyTree:
        rep = jax.tree.map(lambda _: self.spec(True), state.replace(**{learner_field: None}))
        learner = jax.tree.map(lambda _: self.spec(False), getattr(state, learner_field))
        return rep.replace(**{learner_field: learner})

    def shardings(self, specs: PyTree) -> PyTree:
        return jax.tree.map(
            lambda s: NamedSharding(self.mesh, s), specs, is_leaf=lambda x: isinstance(x, P)
        )

    # ------------------------------------------------------------------------ wrappers
    def _map(self, per_device: Callable, in_specs, out_specs) -> Callable:
        return jax.shard_map(
            per_device, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
        )

    def _split(self, x):  # local replicas [k * s, ...] -> [k, s, ...] (sizes explicit:
        k = self.per_device  # MJX states hold zero-size leaves)
        return x.reshape((k, x.shape[0] // k) + x.shape[1:])

    def _merge(self, x):
        return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])

    def init(self, local_init: Callable, learner_init: Callable) -> Callable:
        """Jitted ``init(seed_keys [S]) -> state``: ``learner_init(key)`` once per seed and
        ``local_init(key, learner_state)`` per (shard, seed), from the split of each seed's
        key; shard n > 0 folds n into the loop key (shard 0 keeps it, so one shard is the
        unsharded run)."""

        def per_device(keys):  # [s] seed keys of this device
            k_loop, k_learn = _split_keys(keys)
            learner = jax.vmap(learner_init)(k_learn)
            first = jax.lax.axis_index(DATA) * self.per_device
            states = [
                jax.vmap(local_init)(jax.vmap(lambda k: shard_key(k, first + j))(k_loop), learner)
                for j in range(self.per_device)
            ]
            stacked = jax.tree.map(lambda *xs: jnp.concatenate(xs), *states)
            return stacked.replace(learner_state=learner)

        def build(keys):
            def probe(keys):
                k_loop, k_learn = _split_keys(keys)
                return jax.vmap(local_init)(k_loop, jax.vmap(learner_init)(k_learn))

            specs = self.state_specs(jax.eval_shape(probe, keys[:1]))
            return self._map(per_device, (self.spec(False),), specs)(keys)

        return jax.jit(build)

    def chunk(self, local_fn: Callable, sums: Sequence[str] = ()) -> Callable:
        """Jitted ``chunk(state, *replicated) -> (state, metrics [S])`` from
        ``local_fn(local_state, *replicated) -> (local_state, metrics)`` for one (shard, seed);
        ``replicated`` arguments (e.g. the demo buffer) are the same for every replica.
        Metrics are reduced over the shards with ``reduce_across`` (``sums`` are summed).
        The state is donated."""

        def per_device(state, *rep):
            learner = state.learner_state  # [s]
            rest = jax.tree.map(self._split, state.replace(learner_state=None))

            def one_shard(rest_k):
                def one_seed(r, lstate):
                    return local_fn(r.replace(learner_state=lstate), *rep)

                out, metrics = jax.vmap(one_seed)(rest_k, learner)
                return out, reduce_across(metrics, GRAD_AXES, sums)

            out, metrics = jax.vmap(one_shard, axis_name=SHARDS)(rest)
            learner_out = jax.tree.map(lambda x: x[0], out.learner_state)
            out = jax.tree.map(self._merge, out.replace(learner_state=None))
            return out.replace(learner_state=learner_out), jax.tree.map(lambda x: x[0], metrics)

        def run(state, *rep):
            specs = self.state_specs(state)
            rep_specs = tuple(jax.tree.map(lambda _: P(), r) for r in rep)
            return self._map(per_device, (specs,) + rep_specs, (specs, self.spec(False)))(
                state, *rep
            )

        return jax.jit(run, donate_argnums=0)


def _split_keys(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    split = jax.vmap(jax.random.split)(keys)
    return split[:, 0], split[:, 1]


def shard_key(key: jax.Array, n) -> jax.Array:
    """Shard n's key from a seed's key (typed or raw): the key itself for shard 0, else
    ``fold_in(key, n)``. ``n`` may be traced."""
    folded = jax.random.fold_in(key, n)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        data = jnp.where(n == 0, jax.random.key_data(key), jax.random.key_data(folded))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))
    return jnp.where(n == 0, key, folded)


def sharded_update(learner: Any, mesh: Mesh, method: str = "update") -> Callable:
    """Jitted ``learner.<method>(state, online, offline)`` for a learner built with
    ``axis_name=GRAD_AXES``: the state replicated, the batches [UTD, B, ...] split along B over
    the mesh's data axis (B divisible by it), one shard per device. Returns (state, metrics)
    with metrics reduced over the shards (``reduce_across``)."""
    fn = getattr(learner, method)
    lead = lambda x: x[None]

    def per_device(state, online, offline):
        def one(on, off):
            out, metrics = fn(state, on, off)
            return out, reduce_across(metrics, GRAD_AXES)

        out = jax.vmap(one, axis_name=SHARDS)(
            jax.tree.map(lead, online), jax.tree.map(lead, offline)
        )
        return jax.tree.map(lambda x: x[0], out)

    batch = P(None, DATA)
    return jax.jit(
        jax.shard_map(
            per_device, mesh=mesh, in_specs=(P(), batch, batch), out_specs=P(), check_vma=False
        )
    )


# ------------------------------------------------------------------------- multi-host
def primary() -> bool:
    """Whether this process writes the run's files (process 0; every single-host run)."""
    return jax.process_index() == 0


def initialize_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """``jax.distributed.initialize`` from the arguments or the environment
    (RESFIT_JAX_COORDINATOR host:port, RESFIT_JAX_NUM_PROCESSES, RESFIT_JAX_PROCESS_ID);
    coordinator "auto" leaves it to JAX's cluster detection (SLURM, Kubernetes, ...).
    Returns whether it ran (a single process: nothing to do). Call before any JAX
    computation; on CPU hosts the collectives go through gloo."""
    env = os.environ.get
    coordinator = coordinator or env("RESFIT_JAX_COORDINATOR")
    num_processes = num_processes or int(env("RESFIT_JAX_NUM_PROCESSES") or 0)
    if process_id is None and env("RESFIT_JAX_PROCESS_ID"):
        process_id = int(env("RESFIT_JAX_PROCESS_ID"))
    if not coordinator or (num_processes == 1 and coordinator != "auto"):
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator == "auto":
        jax.distributed.initialize()
        return True
    if not num_processes or process_id is None:
        raise ValueError(
            "A multi-process run needs the coordinator (host:port), the number "
            "of processes and this process's id: pass --coordinator, "
            "--num_processes and --process_id (or set RESFIT_JAX_COORDINATOR, "
            "RESFIT_JAX_NUM_PROCESSES and RESFIT_JAX_PROCESS_ID)."
        )
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
    return True
