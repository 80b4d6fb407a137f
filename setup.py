from setuptools import find_packages, setup

setup(
    name="parsgd",
    version="0.1.0",
    description="Data-parallel mini-batch SGD as explicit message passing: a NumPy MLP and a ZeroMQ parameter server",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(exclude=["tests", "benchmarks"]),
    python_requires=">=3.9",
    install_requires=[
        "numpy>=1.22,<3",
        "pyzmq>=23,<28",
        "msgpack>=1.0,<2",
        "click>=8.0,<9",
        "matplotlib>=3.5,<4",
        "threadpoolctl>=3.1,<4",
    ],
    # import-linter checks the layer contract in .importlinter (tests/test_architecture.py)
    # notebook: the Python API's tables as DataFrames (parsgd.api.results); without it, lists of dicts.
    # test: also runs examples/*.ipynb (nbclient, nbformat, ipykernel) and drives Chromium over its
    # DevTools websocket (websockets) for tests/test_html.py; pytest-xdist runs them on two workers
    # (pytest below 9.1: with pytest 9.2.0 and pytest-xdist 3.8.0, --dist loadgroup ignored the groups).
    extras_require={"notebook": ["pandas>=1.3"],
                    "test": ["pytest>=7,<9.1", "hypothesis>=6", "import-linter>=2.0", "pandas>=1.3", "nbclient>=0.7",
                             "nbformat>=5.7", "ipykernel>=6", "websockets>=13",
                             "pytest-xdist>=3.0"]},
    entry_points={"console_scripts": ["parsgd=parsgd.__main__:run"]},
)
