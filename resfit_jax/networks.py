"""Flax Linen networks of the residual learner.

- ``MLP``: hidden blocks Dense -> [LayerNorm] -> ReLU.
- ``ResidualActor``: (features [B, F], base action [B, A]) -> residual [B, A] in
  [-action_scale, action_scale]; orthogonal hidden init, output layer exactly zero, so the
  residual is exactly 0 at initialisation.
- ``QHead`` / ``EnsembleCritic``: K independent Q heads over (features, action), evaluated
  with one ``nn.vmap``-ed call; output [K, B]. Params carry a leading K axis, so a subset of
  heads is just ``tree.map(lambda p: p[idx], params)`` applied with the same module.

Initialisation follows the reference PyTorch release: actor hidden layers orthogonal (gain 1)
with zero bias; critic layers PyTorch's default (kernel and bias ~ U(+-1/sqrt(fan_in)));
LayerNorm epsilon 1e-5.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

LN_EPS = 1e-5


def torch_kernel_init() -> Callable:
    """PyTorch nn.Linear default kernel init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Callable:
    """PyTorch nn.Linear default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / jnp.sqrt(jnp.maximum(fan_in, 1))

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class MLP(nn.Module):
    """Hidden blocks Dense -> [LayerNorm] -> ReLU. Input [..., D] -> output [..., hidden[-1]]."""

    hidden_dims: Sequence[int]
    layer_norm: bool = True
    init: str = "orthogonal"  # "orthogonal" (zero bias) | "torch" (PyTorch default)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden_dims:
            if self.init == "orthogonal":
                dense = nn.Dense(
                    width,
                    kernel_init=nn.initializers.orthogonal(1.0),
                    bias_init=nn.initializers.zeros,
                )
            elif self.init == "torch":
                dense = nn.Dense(
                    width, kernel_init=torch_kernel_init(), bias_init=torch_bias_init(x.shape[-1])
                )
            else:
                raise ValueError(f"MLP.init must be 'orthogonal' or 'torch', got {self.init!r}.")
            x = dense(x)
            if self.layer_norm:
                x = nn.LayerNorm(epsilon=LN_EPS)(x)
            x = nn.relu(x)
        return x


class ResidualActor(nn.Module):
    """Residual policy mean: action_scale * tanh(MLP([features, base_action])).

    features: [B, F] standardized observation features; base_action: [B, A] in [-1, 1].
    Returns the residual mean [B, A]; exactly zero at initialisation.
    """

    action_dim: int
    hidden_dims: Sequence[int] = (1024, 1024)
    action_scale: float = 0.1
    layer_norm: bool = True
    zero_init_output: bool = True

    @nn.compact
    def __call__(self, features: jax.Array, base_action: jax.Array) -> jax.Array:
        x = jnp.concatenate([features, base_action], axis=-1)
        x = MLP(self.hidden_dims, self.layer_norm, init="orthogonal")(x)
        if self.zero_init_output:
            out = nn.Dense(
                self.action_dim,
                kernel_init=nn.initializers.zeros,
                bias_init=nn.initializers.zeros,
                name="output",
            )
        else:
            out = nn.Dense(
                self.action_dim,
                kernel_init=torch_kernel_init(),
                bias_init=torch_bias_init(x.shape[-1]),
                name="output",
            )
        return self.action_scale * jnp.tanh(out(x))


class QHead(nn.Module):
    """One Q head: MLP([features, action]) -> scalar. Output [B]."""

    hidden_dims: Sequence[int] = (1024, 1024)
    layer_norm: bool = True

    @nn.compact
    def __call__(self, features: jax.Array, action: jax.Array) -> jax.Array:
        x = jnp.concatenate([features, action], axis=-1)
        x = MLP(self.hidden_dims, self.layer_norm, init="torch")(x)
        q = nn.Dense(1, kernel_init=torch_kernel_init(), bias_init=torch_bias_init(x.shape[-1]))(x)
        return q[..., 0]


class EnsembleCritic(nn.Module):
    """K independent ``QHead``s in one vmapped call: (features [B, F], action [B, A]) -> [K, B].

    ``num_heads`` only matters at init; apply works with params of any leading size, so a
    gathered subset of heads is evaluated by the same module.
    """

    num_heads: int = 10
    hidden_dims: Sequence[int] = (1024, 1024)
    layer_norm: bool = True

    @nn.compact
    def __call__(
        self, features: jax.Array, action: jax.Array, base_action: jax.Array | None = None
    ) -> jax.Array:
        """``base_action`` is not used (the ``AdvantageCritic`` call signature)."""
        return _heads(self, "heads")(features, action)


def _heads(module: nn.Module, name: str) -> nn.Module:
    """``module.num_heads`` vmapped ``QHead``s (params with a leading [K] axis)."""
    heads = nn.vmap(
        QHead,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=None,
        out_axes=0,
        axis_size=module.num_heads if module.is_initializing() else None,
    )
    return heads(module.hidden_dims, module.layer_norm, name=name)


class AdvantageCritic(nn.Module):
    """K heads of Q(s, a) = V(s, a_b) + A(s, a) - A(s, a_b) (advantage updating): the
    correction's effect lives in A alone, and Q(s, a_b) = V(s, a_b) exactly.

    (features [B, F], action [B, A], base_action [B, A]) -> [K, B]; two ``QHead``
    ensembles (V on the base action, A on the action), params with a leading [K] axis.
    """

    num_heads: int = 10
    hidden_dims: Sequence[int] = (1024, 1024)
    layer_norm: bool = True

    @nn.compact
    def __call__(
        self, features: jax.Array, action: jax.Array, base_action: jax.Array | None = None
    ) -> jax.Array:
        if base_action is None:
            raise ValueError("AdvantageCritic needs the base action: apply(params, f, a, a_b).")
        value = _heads(self, "value")(features, base_action)
        adv = _heads(self, "advantage")
        return value + (adv(features, action) - adv(features, base_action))  # exact at r = 0
