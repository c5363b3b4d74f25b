"""One parser and one set of bounds for every number a user gives (issue #23, class 6): a CLI
option and the environment variable of the same setting accept and refuse the same values, NaN
and infinities are never a setting, and no count is unbounded."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixquant_cli.main import build_parser
from mixquant_core.errors import MixQuantError
from mixquant_core.numbers import BOUNDS, env_number, parse_number

REPO = Path(__file__).resolve().parents[1]


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "mixquant_cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "-1", "1e10", "x", ""])
def test_cache_mb_option_and_variable_refuse_the_same_values_with_the_same_words(text, monkeypatch):
    with pytest.raises(MixQuantError) as from_option:
        parse_number("cache_mb", text, "--cache-mb")
    if text.strip():
        monkeypatch.setenv("MIXQUANT_CACHE_MB", text)
        with pytest.raises(MixQuantError) as from_env:
            env_number("MIXQUANT_CACHE_MB")
        assert str(from_env.value).replace("MIXQUANT_CACHE_MB", "--cache-mb") == str(from_option.value)
        assert "None" not in str(from_env.value)


def test_good_values_parse_the_same_from_an_option_and_the_environment(monkeypatch):
    monkeypatch.setenv("MIXQUANT_CACHE_MB", " 250.5 ")
    assert env_number("MIXQUANT_CACHE_MB") == parse_number("cache_mb", "250.5") == 250.5
    monkeypatch.setenv("MIXQUANT_CACHE_MB", "")
    assert env_number("MIXQUANT_CACHE_MB", 7.0) == 7.0
    assert parse_number("steps", "12") == 12 and isinstance(parse_number("steps", "12"), int)


def _actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)
        else:
            yield action


def test_no_cli_option_parses_a_number_by_itself():
    """Every numeric option goes through mixquant_core.numbers (a bare int/float type would take
    nan, inf or 10^8 steps)."""
    bare = [a.dest for a in _actions(build_parser()) if a.type in (int, float)]
    assert bare == []
    for action in _actions(build_parser()):
        name = getattr(action.type, "__name__", "")
        if name.split(" ")[0] in BOUNDS:
            with pytest.raises(argparse.ArgumentTypeError):
                action.type("nan")


@pytest.mark.parametrize("args, words", [
    (["report", "--steps", "100000000", "--out", "r.html"], "--steps: must be between 1 and 10000, got 100000000"),
    (["sweep", "--steps", "0"], "--steps: must be between 1 and 10000, got 0"),
    (["results", "prune", "--older-than=-5"], "--older-than: must be between 0 and"),
    (["results", "prune", "--older-than=nan"], "--older-than: must be a finite number"),
    (["results", "show", "99999999999999999999999"], "must be between 1 and"),
    (["search", "--qem", "nan"], "--qem: must be a finite number"),
    (["reconstruct", "--uniform", "9", "--out", "x.safetensors"], "--uniform: must be between 2 and 8, got 9"),
    (["reconstruct", "--uniform", "4", "--method", "gptq", "--damp", "2", "--out", "x.safetensors"],
     "--damp: must be above 0 and at most 1, got 2"),
])
def test_bad_numbers_are_one_usage_line_before_any_work(args, words, tmp_path):
    done = _cli(*args, env={"MIXQUANT_HOME": str(tmp_path)})
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("value, words", [("nan", "MIXQUANT_CACHE_MB: must be a finite number"),
                                          ("-1", "MIXQUANT_CACHE_MB: must be between 0 and 1e+09, got -1")])
def test_a_bad_environment_variable_is_one_line_naming_it(value, words, tmp_path):
    from PIL import Image

    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (32, 32), (10, 20, 30)).save(folder / "images" / "a.png")
    (folder / "labels.txt").write_text("a.png 1\n")
    done = _cli("evaluate", "--data", str(folder), "--no-progress", env={"MIXQUANT_CACHE_MB": value,
                                                                         "MIXQUANT_HOME": str(tmp_path)})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and words in lines[0], done.stderr
