"""BC chunk policies in Flax Linen: an ACT-style action-chunking transformer and an MLP.

Both map a (standardized) observation to a chunk of K standardized actions [B, K, A].
Observation input is a dict: ``{"state": [B, O]}``, optionally with ``"tokens": [B, T, F]``
(precomputed features), which the transformer projects and appends to its encoder sequence,
and camera images ``uint8 [B, H, W, C]`` under any other key (a pixel base): each camera has
its own conv backbone (``ImageTokens``: 3x3 convs, stride 2 until the map is at most
``image_map`` cells a side) whose feature map cells become tokens. A bare [B, O] array is
read as the state.

ACT here follows the reference base of the paper without the VAE: the state is projected
into ``state_tokens`` encoder tokens, a post-norm transformer encoder runs over them (plus
any extra tokens), and a decoder with K learned queries cross-attends to the encoder output;
a linear head gives the chunk. Trained with plain L1 on the chunk.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resfit_jax.encoders import SliceConv


@dataclasses.dataclass(frozen=True)
class BCConfig:
    """Architecture and optimisation of a BC chunk policy (paper scale by default)."""

    policy: str = "act"  # "act" | "mlp"
    chunk_size: int = 20
    execution_horizon: int | None = None  # actions executed per chunk (None: all K)
    dim: int = 512
    heads: int = 8
    ff_dim: int = 3200
    encoder_layers: int = 4
    image_channels: int = 32  # conv backbone of a pixel base (ImageTokens): width
    image_map: int = 4  # and the side of its token map (tokens per camera: 16)
    decoder_layers: int = 1
    state_tokens: int = 4
    dropout: float = 0.1
    mlp_hidden: tuple[int, ...] = (512, 512, 512)
    lr: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 10.0
    batch_size: int = 256
    steps: int = 50_000
    obs_std_floor: float = 1e-2
    action_std_floor: float = 1e-2
    # Relative action chunks: action dim i is predicted relative to obs[action_obs_index[i]]
    # (e.g. a joint target relative to the measured joint position); -1 keeps dim i
    # absolute; None keeps every dim absolute. The base still outputs absolute actions.
    action_obs_index: tuple[int, ...] | None = None

    def __post_init__(self):
        from resfit_jax.run.validation import number_errors

        errors = number_errors(
            self,
            positive=("lr", "obs_std_floor", "action_std_floor", "grad_clip"),
            at_least_one=(
                "chunk_size",
                "dim",
                "heads",
                "ff_dim",
                "encoder_layers",
                "decoder_layers",
                "batch_size",
                "steps",
                "state_tokens",
                "image_channels",
                "image_map",
            ),
            non_negative=("weight_decay",),
            unit=("dropout",),
        )
        if (
            self.execution_horizon is not None
            and not 1 <= self.execution_horizon <= self.chunk_size
        ):
            errors.append(
                f"execution_horizon must be in [1, chunk_size={self.chunk_size}] "
                f"(got {self.execution_horizon})"
            )
        if any(h < 1 for h in self.mlp_hidden):
            errors.append(f"mlp_hidden widths must be >= 1 (got {self.mlp_hidden})")
        if errors:
            raise ValueError("BCConfig: " + "; ".join(errors) + ".")
        if self.policy not in ("act", "mlp"):
            raise ValueError(f"BCConfig.policy must be 'act' or 'mlp', got {self.policy!r}.")
        if self.dim % self.heads:
            raise ValueError(f"BCConfig: dim {self.dim} is not divisible by heads {self.heads}.")

    @classmethod
    def paper(cls, **kw) -> BCConfig:
        return cls(**kw)

    @classmethod
    def cpu(cls, **kw) -> BCConfig:
        """A small transformer that trains in minutes on a 2-core CPU."""
        base = dict(
            dim=128,
            heads=4,
            ff_dim=512,
            encoder_layers=2,
            decoder_layers=1,
            lr=3e-4,
            batch_size=64,
            steps=3000,
            mlp_hidden=(256, 256, 256),
        )
        base.update(kw)
        return cls(**base)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["mlp_hidden"] = list(self.mlp_hidden)
        if self.action_obs_index is not None:
            d["action_obs_index"] = list(self.action_obs_index)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BCConfig:
        d = dict(d)
        d["mlp_hidden"] = tuple(d.get("mlp_hidden", (512, 512, 512)))
        if d.get("action_obs_index") is not None:
            d["action_obs_index"] = tuple(d["action_obs_index"])
        return cls(**d)


def _state_and_tokens(obs: Any) -> tuple[jax.Array, jax.Array | None, list[jax.Array]]:
    """(state [B, O], tokens [B, T, F] or None, camera images [B, H, W, C] in key order)."""
    if isinstance(obs, dict):
        images = [obs[k] for k in sorted(obs) if k not in ("state", "tokens")]
        return obs["state"], obs.get("tokens"), images
    return obs, None, []


class ImageTokens(nn.Module):
    """uint8 [B, H, W, C] -> tokens [B, h * w, channels]: 3x3 ReLU convs, stride 2 while the
    map is larger than ``side`` x ``side``, then one stride-1 conv; each cell is a token."""

    channels: int = 32
    side: int = 4

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        x = image.astype(jnp.float32) / 255.0 - 0.5
        i = 0
        while x.shape[1] > self.side or x.shape[2] > self.side:
            x = nn.relu(SliceConv(self.channels, 3, 2, "SAME", name=f"conv{i}")(x))
            i += 1
        x = nn.relu(SliceConv(self.channels, 3, 1, "SAME", name=f"conv{i}")(x))
        return x.reshape(x.shape[0], -1, self.channels)


def _camera_tokens(images: list[jax.Array], channels: int, side: int) -> jax.Array | None:
    """Tokens of every camera [B, sum h * w, channels], each with a learned camera embedding."""
    if not images:
        return None
    embed = nn.Embed(len(images), channels, name="camera_embed")
    out = [
        ImageTokens(channels, side, name=f"camera{i}")(img) + embed(jnp.array([i]))
        for i, img in enumerate(images)
    ]
    return jnp.concatenate(out, axis=1)


class _EncoderLayer(nn.Module):
    dim: int
    heads: int
    ff_dim: int
    dropout: float

    @nn.compact
    def __call__(self, x, train: bool):
        h = nn.MultiHeadDotProductAttention(
            self.heads, dropout_rate=self.dropout, deterministic=not train
        )(x, x)
        x = nn.LayerNorm()(x + nn.Dropout(self.dropout, deterministic=not train)(h))
        h = nn.Dense(self.dim)(nn.relu(nn.Dense(self.ff_dim)(x)))
        return nn.LayerNorm()(x + nn.Dropout(self.dropout, deterministic=not train)(h))


class _DecoderLayer(nn.Module):
    dim: int
    heads: int
    ff_dim: int
    dropout: float

    @nn.compact
    def __call__(self, q, memory, train: bool):
        drop = lambda h: nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.MultiHeadDotProductAttention(
            self.heads, dropout_rate=self.dropout, deterministic=not train
        )(q, q)
        q = nn.LayerNorm()(q + drop(h))
        h = nn.MultiHeadDotProductAttention(
            self.heads, dropout_rate=self.dropout, deterministic=not train
        )(q, memory)
        q = nn.LayerNorm()(q + drop(h))
        h = nn.Dense(self.dim)(nn.relu(nn.Dense(self.ff_dim)(q)))
        return nn.LayerNorm()(q + drop(h))


class ACTPolicy(nn.Module):
    """Action-chunking transformer: obs -> standardized chunk [B, K, A]."""

    config: BCConfig
    action_dim: int

    @nn.compact
    def __call__(self, obs: Any, train: bool = False) -> jax.Array:
        c = self.config
        state, extra, images = _state_and_tokens(obs)
        b = state.shape[0]
        tokens = nn.Dense(c.dim * c.state_tokens, name="state_proj")(state)
        tokens = tokens.reshape(b, c.state_tokens, c.dim)
        if extra is not None:
            tokens = jnp.concatenate([tokens, nn.Dense(c.dim, name="token_proj")(extra)], 1)
        cams = _camera_tokens(images, c.image_channels, c.image_map)
        if cams is not None:
            tokens = jnp.concatenate([tokens, nn.Dense(c.dim, name="image_proj")(cams)], 1)
        pos = self.param("encoder_pos", nn.initializers.normal(0.02), (tokens.shape[1], c.dim))
        x = tokens + pos[None]
        for i in range(c.encoder_layers):
            x = _EncoderLayer(c.dim, c.heads, c.ff_dim, c.dropout, name=f"encoder_{i}")(x, train)
        queries = self.param("queries", nn.initializers.normal(0.02), (c.chunk_size, c.dim))
        q = jnp.broadcast_to(queries[None], (b, c.chunk_size, c.dim))
        for i in range(c.decoder_layers):
            q = _DecoderLayer(c.dim, c.heads, c.ff_dim, c.dropout, name=f"decoder_{i}")(q, x, train)
        return nn.Dense(self.action_dim, name="action_head")(q)


class MLPChunkPolicy(nn.Module):
    """MLP chunk policy: obs -> standardized chunk [B, K, A]."""

    config: BCConfig
    action_dim: int

    @nn.compact
    def __call__(self, obs: Any, train: bool = False) -> jax.Array:
        c = self.config
        state, extra, images = _state_and_tokens(obs)
        x = state
        if extra is not None:
            x = jnp.concatenate([x, extra.reshape(extra.shape[0], -1)], -1)
        cams = _camera_tokens(images, c.image_channels, c.image_map)
        if cams is not None:
            x = jnp.concatenate([x, cams.reshape(cams.shape[0], -1)], -1)
        for h in c.mlp_hidden:
            x = nn.relu(nn.LayerNorm()(nn.Dense(h)(x)))
            x = nn.Dropout(c.dropout, deterministic=not train)(x)
        out = nn.Dense(c.chunk_size * self.action_dim)(x)
        return out.reshape(x.shape[0], c.chunk_size, self.action_dim)


def make_network(config: BCConfig, action_dim: int) -> nn.Module:
    return (ACTPolicy if config.policy == "act" else MLPChunkPolicy)(config, action_dim)
