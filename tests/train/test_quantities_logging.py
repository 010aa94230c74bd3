"""The trainer logs gradient SNR and per-example norm percentiles each epoch
(``funcbp train --log-quantities batch_l2,variance``) and plots them."""

import math

import pytest

from funcbp.train import TrainConfig, fit, read_metrics


@pytest.mark.slow
def test_fit_logs_quantities_per_epoch(tmp_path):
    fit(TrainConfig(model="mlp", epochs=2, log_quantities="batch_l2,variance", augment=False),
        run_dir=tmp_path, quiet=True)
    epochs = [r for r in read_metrics(tmp_path) if r.get("type") == "epoch"]
    assert len(epochs) == 2
    for r in epochs:
        q = r["quantities"]
        snr = {k: v for k, v in q.items() if k.endswith("/snr")}
        assert "all/snr" in snr and len(snr) >= 3
        assert all(math.isfinite(v) and v > 0 for v in snr.values())
        assert q["all/norm_p05"] <= q["all/norm_p50"] <= q["all/norm_p95"]
    assert (tmp_path / "quantities.png").stat().st_size > 1000


def test_log_quantities_names_are_checked():
    with pytest.raises(ValueError, match="log_quantities"):
        TrainConfig(log_quantities="batch_l2,hessian")
