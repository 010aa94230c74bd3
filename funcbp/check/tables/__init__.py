"""Per-family records of ``funcbp check``'s sample table.

Each module here defines ``samples() -> list[funcbp.check.rules.Sample]`` for one rule family
(``decompositions``, ``special``, ``fft``, ...); :func:`funcbp.check.rules.samples` collects
them after the core table. A module imports what it needs from :mod:`funcbp.check.rules`
(``Sample``, the samplers ``N``, ``U``, ``P``, ``TIES``, ``ZEROS``, ``INT``, ``PERM``).
"""
