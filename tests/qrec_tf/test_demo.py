"""The demo's verdict lines on its test AUC are worded from the numbers, never fixed text."""

from qrec_tf.demo import auc_verdict


def metrics(auc, se, popularity, difference, sd, p_value):
    return {"auc": auc, "auc_standard_error": se, "popularity_auc": popularity,
            "minus_popularity": {"difference": difference, "sd": sd, "p_value": p_value}}


def test_a_clear_result_is_called_clear():
    chance, baseline = auc_verdict(metrics(0.6000, 0.0150, 0.5100, 0.0900, 0.0200, 1e-5))
    assert chance == "AUC - 2 SE = 0.5700: clearly above chance"
    assert baseline.startswith("popularity baseline (items by training count) on the same rows: "
                               "AUC 0.5100; the model minus it +0.0900 +- 0.0200, DeLong p = 1e-05")
    assert baseline.endswith(": the model is above it")


def test_the_old_300_user_demo_is_not_called_clear():
    # 300 users: AUC 0.558 +- 0.035, popularity 0.575 (issue 18 item 9).
    chance, baseline = auc_verdict(metrics(0.558, 0.035, 0.575, -0.017, 0.04, 0.67))
    assert chance.startswith("AUC - 2 SE = 0.4880: NOT clearly above chance")
    assert baseline.endswith("NOT shown to be above it")
    # Above the baseline but not significantly: still not called above it.
    _, baseline = auc_verdict(metrics(0.62, 0.01, 0.60, 0.02, 0.015, 0.18))
    assert baseline.endswith("NOT shown to be above it")
    # Above 0.5 by less than two standard errors is not "clearly above".
    chance, _ = auc_verdict(metrics(0.55, 0.03, 0.5, 0.05, 0.01, 1e-4))
    assert chance == "AUC - 2 SE = 0.4900: NOT clearly above chance (a larger --users gives " \
                     "more test rows)"


def test_waiting_for_the_server_stops_when_it_exits():
    """A server that dies while loading is reported at once, not after the start timeout."""
    import subprocess
    import sys

    import pytest

    from qrec_tf.demo import wait_for_server
    from serving.client import ServingError

    class NeverUp:
        calls = 0

        def wait_until_available(self, timeout):
            self.calls += 1
            raise ServingError("UNAVAILABLE", "connection refused")

    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait()
    rest = NeverUp()
    with pytest.raises(ServingError, match="exited with status 3"):
        wait_for_server(rest, process)
    assert rest.calls == 0
