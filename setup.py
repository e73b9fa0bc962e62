"""resfit-jax: residual off-policy RL (ResFiT) for fine-tuning frozen BC policies, in JAX."""
from setuptools import find_packages, setup

# Ranges tested on Python 3.12 (CPU); upper bounds guard against the next breaking minor.
INSTALL_REQUIRES = [
    "jax>=0.11.1,<0.13",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.12,<0.13",
    "chex>=0.1.90,<0.2",
    "mujoco==3.17.0",
    "mujoco-mjx==3.17.0",
    "warp-lang>=1.15,<1.20",  # camera observations: MJX's MuJoCo Warp renderer (CPU or GPU)
    "tensorflow-datasets>=4.9.8,<4.10",
    "array-record>=0.8,<0.9",
    "importlib_resources>=6",  # tfds builders need it (via etils.epath) but do not declare it
    "flatbuffers>=24",  # jax.export serialization (base export artifacts)
    "absl-py>=2.1,<3",
    "tqdm>=4.66,<5",
    "tensorboardX>=2.6,<3",
    "numpy>=2.0,<3",
    "matplotlib>=3.9,<4",  # experiments/plot.py and the quick start's learning curves
]

setup(
    name="resfit-jax",
    version="0.1.0",
    description="Residual off-policy RL (ResFiT) for fine-tuning frozen behaviour-cloning policies, in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.12",
    packages=find_packages(include=["resfit_jax", "resfit_jax.*", "bases", "bases.*",
                                    "experiments", "experiments.*", "benchmarks", "benchmarks.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": ["pytest>=8,<10", "pytest-timeout>=2.3,<3", "pytest-xdist>=3.5,<4"],
        "dev": ["pytest>=8,<10", "pytest-timeout>=2.3,<3", "pytest-xdist>=3.5,<4", "ruff>=0.6"],
        # experiments/render_rollout.py: GIF via Pillow, MP4 via imageio-ffmpeg's bundled
        # ffmpeg. Rendering itself needs an OpenGL backend (EGL or OSMesa) from the OS.
        "render": ["pillow>=10,<14", "imageio-ffmpeg>=0.5,<0.9"],
    },
)
