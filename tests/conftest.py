"""Suite-wide test settings."""

import os

# Tests run on the CPU whatever the machine has, so results are comparable across machines.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
