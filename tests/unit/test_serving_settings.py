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
