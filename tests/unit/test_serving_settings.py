"""``recsys serve`` flags: a bad value is a one-line error naming the setting, before anything loads."""

from __future__ import annotations

import pytest

from recsys.cli import main


@pytest.mark.parametrize(
    "flag, value, key",
    [
        ("--header-timeout", "0", "header_timeout_s"),
        ("--max-inflight", "0", "max_inflight"),
        ("--log-level", "loud", "log_level"),
    ],
)
def test_bad_serve_settings_name_the_setting(flag, value, key, capsys, tmp_path):
    assert main(["serve", "--model", str(tmp_path / "missing"), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"recsys serve: setting '{key}': ") and "(got " in err and "Traceback" not in err


def test_unknown_front_is_refused_by_the_parser(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["serve", "--model", str(tmp_path), "--server", "nginx"])
    assert "invalid choice: 'nginx'" in capsys.readouterr().err


def test_the_heap_alive_after_the_load_is_frozen_and_can_be_turned_off():
    import gc

    from recsys.serving.fronts import freeze_heap
    from recsys.serving.settings import ServeSettings

    earlier = gc.get_freeze_count()  # another test of this process (Feast's store) may have frozen some
    alive = [[] for _ in range(1000)]  # containers alive at the freeze (as the model's are)
    try:
        assert freeze_heap(ServeSettings(model="m", gc_freeze=False)) == 0 and gc.get_freeze_count() == earlier
        assert any(id(o) == id(alive[0]) for o in gc.get_objects()), "not frozen while turned off"
        assert freeze_heap(ServeSettings(model="m")) >= earlier + 1000
        later = [[] for _ in range(10)]  # made after it (a request's): collected as usual
        tracked = {id(o) for o in gc.get_objects()}  # the collector's generations, not the frozen ones
        assert not any(id(o) in tracked for o in alive) and all(id(o) in tracked for o in later)
    finally:
        if earlier == 0:
            gc.unfreeze()


def test_no_gc_freeze_flag_reaches_the_settings(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr("recsys.serving.fronts.serve", lambda settings: seen.setdefault("settings", settings))
    assert main(["serve", "--model", str(tmp_path), "--no-gc-freeze"]) in (0, None)
    assert seen["settings"].gc_freeze is False
    seen.clear()
    assert main(["serve", "--model", str(tmp_path)]) in (0, None)
    assert seen["settings"].gc_freeze is True
