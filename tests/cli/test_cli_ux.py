"""What the command line shows: version, help with examples, model sizes, the data check's synthetic line."""

import pytest

from ensemblekit import __version__
from ensemblekit.cli import EXAMPLES, _parser, main


def _exit_output(capsys, *argv):
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    assert done.value.code == 0
    return capsys.readouterr().out


def test_version(capsys):
    assert _exit_output(capsys, "--version").strip() == f"ensemblekit {__version__}"


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_every_subcommand_help_ends_with_an_example(capsys, command):
    text = _exit_output(capsys, command, "--help")
    assert "example" in text and f"ensemblekit {command}" in text.split("example", 1)[1]


def test_set_has_help_with_an_example(capsys):
    for command in ("train", "describe"):
        text = " ".join(_exit_output(capsys, command, "--help").split())
        assert "--set KEY=VALUE override a config field (repeatable); VALUE is parsed as YAML" in text
        assert "--set train.epochs=5" in text


def test_every_subcommand_has_examples():
    from ensemblekit.cli import COMMANDS

    assert set(COMMANDS) - set(EXAMPLES) <= {"predict", "export"}  # subcommands other helpers add bring their own


def test_list_models_shows_parameter_counts(capsys):
    assert main(["list", "models"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "(272,474; 10 classes)" in lines["resnet20"]  # He et al. (2016): 0.27M parameters
    assert "36.48M params" in lines["wrn28_10"]  # Zagoruyko & Komodakis (2016): 36.5M


def test_data_check_describes_the_synthetic_set_sensibly(capsys, tmp_path):
    assert main(["data", "check", "--root", str(tmp_path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("synthetic"))
    assert "built in" in line and "no files" in line and "10 classes" in line
    assert "found (generated) at generated" not in line


def test_member_indices_are_given_with_member_and_the_old_members_spelling_still_parses():
    for flag in ("--member", "--members"):
        args = _parser().parse_args(["interpolate", "runs/de", flag, "2", "3"])
        assert args.member_indices == [2, 3]
    assert _parser().parse_args(["interpolate", "runs/de"]).member_indices == [0, 1]
