"""VJP rules for convolutions and windowed reductions (pooling)."""
