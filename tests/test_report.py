"""`cdscale report` refuses a folder that is not a finished run (its output on a real run is
checked in tests/test_stack.py)."""

from cdscale.cli import main


def test_report_of_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no summary.json and no committed state" in capsys.readouterr().err
