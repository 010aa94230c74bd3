"""Suite-wide test settings."""

import os

# Tests run on the CPU whatever the machine has, so results are comparable across machines.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The suite compiles thousands of small programs and runs most of them once, so XLA's LLVM
# backend optimisations cost far more than they save: off, the suite takes about a third less
# time on 2 cores (the rule table alone: 217 s -> 90 s). Numerics are unchanged
# (XLA:CPU does no fast-math either way) and jax, the reference, runs under the same flags;
# benchmarks do not read this file. Subprocesses the tests start (the CLI, multi-process runs)
# inherit it. Set either flag yourself in XLA_FLAGS to override.
_FAST_COMPILE = {"--xla_backend_optimization_level": "0",
                 "--xla_llvm_disable_expensive_passes": "true"}
_flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join(
    [_flags] * bool(_flags) + [f"{k}={v}" for k, v in _FAST_COMPILE.items() if k not in _flags])
