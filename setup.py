"""Builds the SFU's C hot path (``sfu._fastpath``, ``sfu._bwe``) and makes sure the page's
vendored Socket.IO client is in every build; the rest is in pyproject.toml."""

import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py
from setuptools.command.egg_info import egg_info

HERE = Path(__file__).resolve().parent
WEB = HERE / "web"
VENDORED = WEB / "vendor" / "socket.io.min.js"
FROM_NPM = WEB / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"


def vendor_socketio() -> None:
    """The page loads the Socket.IO client from our own server (never a CDN), so a wheel
    without it serves a page that cannot connect. A clean checkout has only
    web/package.json and its lock file: install from them (npm's cache is enough when
    offline), or stop the build and say why."""
    if VENDORED.is_file():
        return
    if not FROM_NPM.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit(
                "roundtable: building needs web/vendor/socket.io.min.js, made from the npm "
                "package pinned in web/package-lock.json: install npm (Debian: apt-get "
                "install npm) or run `make install` once, then build again"
            )
        # Only what the page ships (--omit=dev: the browser tests' tools are not needed
        # to build, and need not be in npm's cache when building offline).
        done = subprocess.run(
            [
                npm,
                "ci",
                "--omit=dev",
                "--prefer-offline",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ],
            cwd=WEB,
        )
        if done.returncode != 0 or not FROM_NPM.is_file():
            raise SystemExit(
                "roundtable: `npm ci` in web/ failed, so the Socket.IO client for the page "
                "(web/vendor/socket.io.min.js) could not be vendored; see npm's message above"
            )
    VENDORED.parent.mkdir(exist_ok=True)
    shutil.copyfile(FROM_NPM, VENDORED)


# Metadata comes first (and needs web/vendor to exist as the package directory of
# roundtable_web.vendor), then the files: vendor before either.
class EggInfoWithPage(egg_info):
    def run(self) -> None:
        vendor_socketio()
        super().run()


class BuildPyWithPage(build_py):
    def run(self) -> None:
        vendor_socketio()
        super().run()


# Listed, not globbed: a checkout missing one of them fails to build instead of
# making a module without it.
FASTPATH_SOURCES = [
    f"sfu/fastpath/{name}.c"
    for name in (
        "module", "meter", "srtp", "packet", "reader", "inbound", "leg", "vp8", "twcc", "tally"
    )
]

setup(
    cmdclass={"egg_info": EggInfoWithPage, "build_py": BuildPyWithPage},
    ext_modules=[
        # One module from the files of sfu/fastpath/, one per concern (see fastpath.h).
        Extension(
            "sfu._fastpath",
            FASTPATH_SOURCES,
            depends=["sfu/fastpath/fastpath.h"],
            include_dirs=["sfu/fastpath"],
            # The files share fp_* names; only PyInit__fastpath leaves the library.
            extra_compile_args=[
                "-O2",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                "-fvisibility=hidden",
            ],
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
    ],
)
