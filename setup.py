"""Build hook for the one compiled part of hope_attr: the optional series kernel.

Everything else about the package (name, dependencies, packages) is in ``pyproject.toml``. The
extension ``hope_attr.engine._series_kernel`` is built at install time (``pip install .``,
``pip install -e .``, a wheel build) and is ``optional``: where no C compiler works, the install
still succeeds and :mod:`hope_attr.engine.native` reports why the torch loops run instead
(``hope_attr.engine.native.status()``).
"""

from __future__ import annotations

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Portable on purpose: no -mavx2 or -march=native (the source clones its kernels for AVX2 where
# the compiler can). -ffp-contract=off: fused multiply-adds made an element's last bit depend on
# its position in a block, so results changed with internal_batch_size.
_GNU_FLAGS = ["-O3", "-std=gnu99", "-ffp-contract=off"]


class _BuildKernel(build_ext):
    """``build_ext`` with the kernel's flags for GCC-like compilers.

    The source needs GNU vector extensions; other compilers (MSVC) fail on its ``#error`` line,
    and ``optional=True`` turns that failure into a warning.
    """

    def build_extensions(self) -> None:
        if self.compiler.compiler_type in ("unix", "mingw32", "cygwin"):
            for extension in self.extensions:
                extension.extra_compile_args = [*_GNU_FLAGS, *extension.extra_compile_args]
        super().build_extensions()


setup(
    ext_modules=[
        Extension(
            "hope_attr.engine._series_kernel",
            sources=["hope_attr/engine/_series_kernel.c"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": _BuildKernel},
)
