"""Builds the SFU's C hot path (``sfu._fastpath``, ``sfu._bwe``); the rest is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sfu._fastpath",
            ["sfu/_fastpath.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        ),
        Extension(
            "sfu._bwe",
            ["sfu/_bwe.c"],
            # Its estimates must equal aiortc's bit for bit: no fused multiply-adds.
            extra_compile_args=[
                "-O2",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                "-ffp-contract=off",
            ],
        ),
    ]
)
