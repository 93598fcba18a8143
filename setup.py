"""Maps the card's top-level folders under the one import package `zonemesh`.

pyproject.toml holds all metadata; this file only computes the package list, so that a
new sub-package is picked up without editing a hand-kept list.
"""

from setuptools import find_packages, setup

# import name -> folder in the repository
ROOTS = {
    "zonemesh": "zonemesh",
    "zonemesh.shared": "shared",
    "zonemesh.global_cp": "global_cp",
    "zonemesh.zone_cp": "zone_cp",
    "zonemesh.proto": "proto",
}

packages = []
for name, folder in ROOTS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=ROOTS)
