"""Markers of the trainer's tests."""


def pytest_configure(config):
    # Registered here (not only in pyproject.toml) so --strict-markers accepts it either way.
    config.addinivalue_line(
        "markers", "gpu: runs on a GPU when jax.devices('gpu') has one (JAX_PLATFORMS=cuda); "
                   "skipped otherwise, never needed in CI")
