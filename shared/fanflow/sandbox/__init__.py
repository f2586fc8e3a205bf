"""Running a code node's untrusted code in a child process with limits (`process`); the
child's own program is `child`, read from this package and never imported by the worker."""

from fanflow.sandbox.process import DEFAULT_MAX_OUTPUT_BYTES, run_python

__all__ = ["DEFAULT_MAX_OUTPUT_BYTES", "run_python"]
