"""Every command's flags fed extreme and malformed values (huge, negative, NaN, infinite, empty, NUL, non-UTF-8 via
surrogate escapes): the argument stage ends in a parse, or exit 2 with an `error:` line, never a traceback.

Cheap by design: only the argument stage runs (each command's own argparse parser, and `hfxray train`'s
`parse_args` with its validation), not the work behind it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hfxray.cli import COMMANDS, Parser
from hfxray.errors import HfxrayError

EXTREME = st.sampled_from(["9" * 5000, "1e400", "-1", "-9999999999999999999", "nan", "NaN", "inf", "-inf", "",
                           " ", "\x00", "a\x00b", "\udcff\udcfe", "0", "0.0", "-0", "1,2", "[]", "{}", "=1+1",
                           "--", "-", "~", "/", "..", "x" * 4096])
VALUE = st.one_of(EXTREME, st.text(max_size=20), st.integers().map(str), st.floats().map(str))
TRAIN_FLAGS = ["--learning_rate", "--num_train_epochs", "--max_steps", "--per_device_train_batch_size",
               "--image_size", "--resize_size", "--seed", "--max_train_samples", "--warmup_steps", "--weight_decay",
               "--label_smoothing_factor", "--max_zoom", "--config_overrides", "--preset", "--model", "--recipe",
               "--gradient_accumulation_steps", "--logging_steps", "--cache_dir", "--max_grad_norm"]
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _parser(name: str) -> argparse.ArgumentParser:
    """The parser `hfxray NAME` builds (hfxray.cli._dispatch)."""
    parser = Parser(prog=f"hfxray {name}", description=COMMANDS[name][1])
    importlib.import_module(COMMANDS[name][0]).add_arguments(parser)
    return parser


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [action.option_strings[-1] for action in parser._actions
            if action.option_strings and action.nargs != 0 and action.dest != "help"]


def _positionals(parser: argparse.ArgumentParser) -> int:
    return sum(1 for action in parser._actions if not action.option_strings)


def _ends_well(call) -> None:
    """Parsed, or exit 2 with an `error:` line; anything else (a traceback) fails the test."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            call()
        except SystemExit as stop:
            assert stop.code == 2, stop.code
            assert "error: " in err.getvalue().strip().split("\n")[-1], err.getvalue()  # argparse: usage, then it
        except HfxrayError as problem:  # cli.main prints these as one `error:` line, exit 2
            assert "\n" not in str(problem).strip() and "To fix" in str(problem), str(problem)


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - {"train"}))
def test_every_command_parses_hostile_values_or_exits_2(name):
    parser = _parser(name)
    options = _options(parser)

    @SETTINGS
    @given(st.lists(st.tuples(st.sampled_from(options), VALUE), max_size=4) if options else st.just([]),
           st.lists(VALUE, min_size=_positionals(parser), max_size=_positionals(parser) + 2))
    def check(flags, positionals):
        argv = [*positionals, *(token for flag, value in flags for token in (flag, value))]
        _ends_well(lambda: parser.parse_args(argv))

    check()


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(TRAIN_FLAGS), VALUE), min_size=1, max_size=3))
def test_train_arguments_take_hostile_values_or_refuse_them_in_one_line(fake_prepared, tmp_path, flags):
    from hfxray.arguments import parse_args

    argv = ["--model", "vit", "--preset", "tiny", "--data-dir", str(fake_prepared), "--output-dir",
            str(tmp_path / "run"), *(token for flag, value in flags for token in (flag, value))]
    _ends_well(lambda: parse_args(argv, prog="hfxray train"))


@pytest.mark.parametrize("name", ["push", "cv"])
def test_a_refused_value_with_a_newline_gives_a_one_line_error(name):
    """argparse quotes the values it refuses; a newline in one must not break the error into two lines (found by
    the test above: `hfxray push RUN REPO '\\n'` raised "unrecognized arguments: <newline>")."""
    parser = _parser(name)
    with pytest.raises(HfxrayError) as refused:
        parser.parse_args(["a", "b", "\n"] if name == "push" else ["--no-such-flag\nvalue"])
    assert "\n" not in str(refused.value) and "To fix" in str(refused.value)
