"""Maps the top-level folders into the single ``geossm`` import namespace.

``kernels/`` installs as ``geossm.kernels``, ``serialization/`` as ``geossm.serialization`` and
``tasks/`` as ``geossm.tasks`` (see docs/architecture.md); every sub-folder with an ``__init__.py`` becomes a
sub-package, so adding one needs no edit here.
"""

from pathlib import Path

from setuptools import setup

ROOTS = {"geossm": "geossm", "geossm.kernels": "kernels",
         "geossm.serialization": "serialization", "geossm.tasks": "tasks"}


def _packages_and_dirs():
    here = Path(__file__).parent
    packages, package_dir = [], {}
    for name, folder in ROOTS.items():
        for init in sorted((here / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(here)
            sub = init.parent.relative_to(here / folder).parts
            pkg = ".".join((name, *sub))
            packages.append(pkg)
            package_dir[pkg] = rel.as_posix()
    return packages, package_dir


packages, package_dir = _packages_and_dirs()
setup(packages=packages, package_dir=package_dir)
