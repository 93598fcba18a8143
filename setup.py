"""Maps the card's top-level folders under the one import package `zonemesh`.

pyproject.toml holds all metadata and the folder mapping ([tool.zonemesh.packages]); this
file only turns that mapping into setuptools' package list, so that a new sub-package is
picked up without editing a hand-kept list.
"""

import tomllib
from pathlib import Path

from setuptools import find_packages, setup

ROOTS: dict[str, str] = tomllib.loads(Path(__file__).with_name("pyproject.toml").read_text())["tool"]["zonemesh"][
    "packages"
]

packages = []
for name, folder in ROOTS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=ROOTS)
