"""Declares the optional C extension lpu_runtime._native; every other piece of metadata is in pyproject.toml.

`optional=True`: without a C compiler the package still installs, and lpu_runtime.native reports why the
extension is missing (the runtime then uses its numpy kernels). The flags keep the float kernels deterministic:
no FMA contraction, no fast-math, no -march (AVX2 code is selected at run time inside the extension).
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup

UNIX_FLAGS = ["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-math-errno", "-fvisibility=hidden", "-pthread"]

setup(
    ext_modules=[
        Extension(
            "lpu_runtime._native",
            sources=["lpu_runtime/csrc/lpu_kernels.c"],
            extra_compile_args=[] if sys.platform == "win32" else UNIX_FLAGS,
            extra_link_args=[] if sys.platform == "win32" else ["-pthread", "-lm"],
            optional=True,
        )
    ]
)
