"""Builds the optional compiled fast path (Cython) beside the pure-Python package.

Everything else about the package is in pyproject.toml. The extension is optional: without a C
compiler the install still succeeds and every record takes the pure-Python reference path.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension(
                "refinery._record_fastpath",
                ["layers/refinery/refinery/_record_fastpath.pyx"],
                extra_compile_args=["-O2"],
                optional=True,
            )
        ],
        compiler_directives={"language_level": 3},
        quiet=True,
    )
)
