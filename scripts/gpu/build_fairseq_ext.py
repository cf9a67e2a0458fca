"""Compiles only the two Cython extensions fairseq-train needs (batching and token blocks) in place, in a
patched fairseq 0.10.2 source tree given as the working directory. Used on a GPU host whose Python has no
fairseq wheel (scripts/gpu/device_run.sh); the C++ extensions (libbleu, libnat) serve other models."""
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

EXTS = ["fairseq.data.data_utils_fast", "fairseq.data.token_block_utils_fast"]

setup(
    name="fairseq-ext",
    ext_modules=cythonize(
        [Extension(m, [m.replace(".", "/") + ".pyx"], language="c++", include_dirs=[numpy.get_include()],
                   extra_compile_args=["-std=c++11", "-O3"]) for m in EXTS],
        language_level=3, quiet=True),
    script_args=["build_ext", "--inplace", "-j", "2"],
)
