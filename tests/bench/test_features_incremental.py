"""The features benchmark of a steady day: incremental update against the window re-read."""

from jobs.bench import features_incremental


def test_the_incremental_day_equals_the_window_reread_and_reports_the_speed_up(lake_cfg, tmp_path):
    result = features_incremental.run(300, lake_cfg, tmp_path, progress=lambda line: None)
    assert result["differing_rows"] == 0
    assert result["rows"] > 0 and result["users"] == 300
    rows = features_incremental.summary_rows(result)
    assert rows[0]["figure"] == "features incremental vs window re-read, 300 users"
    assert rows[0]["value"] == result["full_reread_seconds"] / result["incremental_seconds"]
    assert rows[1]["met"] is True
