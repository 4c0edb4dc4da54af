"""NPR Engine: native parallel reasoning as a plugin for stock SGLang."""

from setuptools import setup

# NOTE: the repository keeps SGLang hooks in patches/ and Triton kernels in kernels/ at
# the top level, but they install inside our namespace: a top-level `kernels` package
# would shadow the HF `kernels` package SGLang depends on.
setup(
    name="npr-engine",
    version="0.1.0",
    description="Fork/join serving of native parallel reasoning models on stock SGLang",
    python_requires=">=3.10",
    packages=[
        "npr_engine",
        "npr_engine.grammar",
        "npr_engine.core",
        "npr_engine.sched",
        "npr_engine.api",
        "npr_engine.patches",
        "npr_engine.kernels",
    ],
    package_dir={
        "npr_engine": "npr_engine",
        "npr_engine.patches": "patches",
        "npr_engine.kernels": "kernels",
    },
    py_modules=[],
    entry_points={
        "sglang.srt.plugins": ["npr_engine = npr_engine.plugin:load"],
        "console_scripts": ["npr-server = npr_engine.launcher:main"],
    },
)
