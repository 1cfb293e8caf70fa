# The project is configured in pyproject.toml; this file lets tools that still call setup.py work.
from setuptools import setup

setup()
