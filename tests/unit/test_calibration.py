"""The calibration: the fit re-run from the published table reproduces the defaults, the held-out predictions
in docs/perfmodel.md are what the defaults give, and the split keeps at least half of each side held out."""

from __future__ import annotations

import dataclasses

import pytest

from lpu_runtime import calibration

ROWS = calibration.load_published()


def test_every_published_row_names_its_source_and_a_range_holding_its_figure() -> None:
    assert {r.side for r in ROWS} == {"lpu", "gpu"}
    for r in ROWS:
        assert r.source and r.url.startswith("https://"), r.id
        assert r.low <= r.published <= r.high, r.id
    for side in ("lpu", "gpu"):
        mine = [r for r in ROWS if r.side == side]
        assert 0 < 2 * sum(r.role == "fit" for r in mine) <= len(mine), side


def test_the_fit_reproduces_the_defaults() -> None:
    fitted = calibration.fit(ROWS)
    assert calibration.reproduces(fitted, calibration.defaults()), (fitted, calibration.defaults())


def test_the_documented_predictions_are_the_defaults_own() -> None:
    table = calibration.render_predictions(calibration.predictions(ROWS))
    documented = calibration.docs_table(calibration.PERFMODEL_DOC.read_text())
    assert documented == table, "re-run benchmarks/fit_perfmodel.py --write-docs"


def test_a_split_fitting_more_than_half_is_refused() -> None:
    greedy = [dataclasses.replace(r, role="fit") if r.side == "gpu" else r for r in ROWS]
    with pytest.raises(ValueError, match="at most half"):
        calibration.fit(greedy)
