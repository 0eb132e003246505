"""Thin setup.py: the metadata is in pyproject.toml. This file only puts the repo's ``properties/*.yaml`` (overall,
datasets, demo, ...) into the package, beside ``recbole_gflowgr/properties/{model,finetune,tokenizer}``, where an
installed recbole_gflowgr reads them (``foundation/paths.py`` REPO_PROPERTIES)."""
import glob
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithProperties(build_py):
    def run(self):
        super().run()
        root = os.path.join(HERE, "properties")
        for path in glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True):
            target = os.path.join(self.build_lib, "recbole_gflowgr", "properties", os.path.relpath(path, root))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(path, target)


setup(cmdclass={"build_py": BuildWithProperties})
