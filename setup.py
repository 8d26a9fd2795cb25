"""Build script. The package is pure Python plus (later) compiled kernel modules."""
from setuptools import setup

setup()
