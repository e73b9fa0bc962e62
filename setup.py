"""resfit-jax's packaging lives in pyproject.toml (metadata, dependencies, console scripts,
the package map that installs experiments/, studies/ and benchmarks/ inside resfit_jax);
this file lets tools that still call ``setup.py`` build the same package."""

from setuptools import setup

setup()
