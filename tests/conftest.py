"""Test set-up: 8 fake CPU devices so that sharded steps are tested without accelerators, and one persistent
compilation cache for the test session.

Both must be set before jax is imported anywhere, which is why they live here.

The compilation cache: many tests build the same smoke-size programs (a run and its resumed rerun, the stage-1
teacher, init, evaluation, orbax's per-shape slices when saving, the feature extractor of every encoder), each
compiled anew by a fresh ``jax.jit``; on CPU compiling is most of a smoke run. With ``JAX_COMPILATION_CACHE_DIR``
an identical program is compiled once per session and loaded afterwards: the same executable, so exact-equality
tests compare what they compared before. The directory is new for each session (never reused from an earlier
run). pytest-xdist starts its workers after this file ran in the controller, so they and the subprocesses the
tests start (CLI, notebook kernels) inherit the variables and share the directory: jax writes an entry only when
it is absent, and an entry read while another process is still writing it fails its zlib check, which jax
reports as a warning before compiling the program itself (never a wrong program).
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix=f"usjepa_jax_tests_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # small programs too (orbax's slices)
