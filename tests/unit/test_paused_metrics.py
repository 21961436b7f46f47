"""A paused provider shows in the metrics (reconciler_provider_paused) until it is resumed."""

from __future__ import annotations

from reconciler.metrics import Metrics
from reconciler.store import base
from tests.support.shop import T0


def report(*paused: str) -> base.StatusReport:
    return base.StatusReport(
        pending=(),
        no_longer_checked=0,
        instances=(),
        paused=tuple(base.ProviderControl(p, True, "cli:alice", T0, None) for p in paused),
    )


def test_the_paused_gauge_follows_provider_controls() -> None:
    metrics = Metrics(providers=["fake", "other"])
    text = metrics.render().decode()
    assert 'reconciler_provider_paused{provider="fake"} 0.0' in text
    metrics.backlog(report("fake"), T0, ["fake", "other"])
    text = metrics.render().decode()
    assert 'reconciler_provider_paused{provider="fake"} 1.0' in text
    assert 'reconciler_provider_paused{provider="other"} 0.0' in text
    metrics.backlog(report(), T0, ["fake", "other"])
    assert 'reconciler_provider_paused{provider="fake"} 0.0' in metrics.render().decode()
