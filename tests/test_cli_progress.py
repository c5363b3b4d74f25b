"""Progress on stderr: a bar on a terminal or with --progress, one plain line per finished stage
when stderr is a file or a pipe (no ``\\r`` updates in logs), nothing with --no-progress."""
from __future__ import annotations

import argparse
import re

import pytest

from mixquant_cli.main import build_parser, main
from mixquant_cli.progress import BAR, LINES, OFF, progress, progress_mode, stage_line

STAGE_LINE = re.compile(r"^mixquant: QE table: 50 layers done in \d+\.\d s$")


@pytest.mark.parametrize("no_progress, force, terminal, mode", [
    (False, False, True, BAR), (False, False, False, LINES), (False, True, False, BAR), (True, False, True, OFF),
])
def test_mode_follows_the_flags_and_the_terminal(no_progress, force, terminal, mode):
    assert progress_mode(no_progress, force, terminal) == mode


def test_a_stage_line_counts_what_the_stage_did(capsys):
    with progress(LINES, "sweep", "plans") as cb:
        cb(3, 12, "plan 4/12")
        cb(12, 12, "done")
    err = capsys.readouterr().err
    assert re.fullmatch(r"mixquant: sweep: 12 plans done in \d+\.\d s\n", err)
    assert stage_line("decode", 1.25) == "mixquant: decode: done in 1.2 s"


def test_a_failed_stage_says_nothing_done(capsys):
    with pytest.raises(RuntimeError), progress(LINES, "QE table", "layers") as cb:
        cb(1, 50, "first")
        raise RuntimeError("broken")
    assert capsys.readouterr().err == ""


def test_non_terminal_stderr_gets_lines_and_progress_forces_the_bar(capsys):
    # capsys's stderr is not a terminal, like a log file or a pipe
    assert main(["qe", "--json", "--device", "cpu", "--bits", "8,4"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and [line for line in err.splitlines() if STAGE_LINE.match(line)], err
    assert main(["qe", "--json", "--device", "cpu", "--bits", "8,4", "--progress"]) == 0
    err = capsys.readouterr().err
    assert "\r" in err and "QE table" in err and not STAGE_LINE.search(err)
    assert main(["qe", "--json", "--device", "cpu", "--bits", "8,4", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_every_command_with_no_progress_has_progress_and_every_command_json():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        flags = set(sub._option_string_actions)
        assert "--json" in flags, name
        assert ("--no-progress" in flags) == ("--progress" in flags), name
