"""Build the optional native extension ``omtseg._pngids`` (metadata lives in pyproject.toml).

The extension speeds up panoptic evaluation (PNG unfiltering, pair counting). It is optional: where no C
compiler is available the build skips it and omtseg uses its numpy/PIL paths, with the same results.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("omtseg._pngids", sources=["omtseg/_pngids.c"], extra_compile_args=["-O3"], optional=True)
    ]
)
