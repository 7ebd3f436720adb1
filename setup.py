"""Build the optional native extension ``omtseg._pngids`` (metadata lives in pyproject.toml).

The extension speeds up panoptic evaluation (PNG unfiltering, pair counting). It is optional: where no C
compiler is available the build skips it and omtseg uses its numpy/PIL paths, with the same results.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "omtseg._pngids",
            sources=[f"omtseg/_native/{name}.c" for name in ("module", "rows", "inflate", "pairs")],
            depends=["omtseg/_native/pngids.h"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
