"""Fuzzing (issue 13): hostile configs, ``--set`` values, YAML documents, CLI argv and image files.

Every case must end in success or one clean ``UserError`` (exit 2 at the CLI) whose message is one line of
under 500 characters; any other exception fails the test. The example counts add up to more than 5,000 cases
(``FUZZ_CASES``); the profile is derandomised (``tests/conftest.py``) so CI draws the same cases every time.
``pytest tests/reliability/test_fuzz.py --hypothesis-show-statistics`` prints the outcome counts; add
``--hypothesis-profile=explore --hypothesis-seed=N`` to search new cases.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ensemblekit.config import config_to_dict
from ensemblekit.errors import UserError
from ensemblekit.resolve import config_from_dict, load_config
from tests.reliability.fuzz_strategies import (
    VALUE_TEXT,
    image_bytes,
    method_configs,
    mutated_configs,
    set_overrides,
    yaml_documents,
)

CASES = {"configs": 2000, "overrides": 1500, "yaml": 1000, "cli": 600, "images": 300}
FUZZ_CASES = sum(CASES.values())
FAST = {"deadline": None, "suppress_health_check": list(HealthCheck), "database": None}


def assert_clean(exc: UserError) -> None:
    event("refused cleanly")
    message = str(exc)
    assert message and "\n" not in message, repr(message[:300])
    assert len(message) < 500, message[:300]


def test_the_suite_runs_at_least_5000_cases():
    assert FUZZ_CASES >= 5000


@settings(max_examples=CASES["configs"], **FAST)
@given(mutated_configs())
def test_config_dicts(raw):
    try:
        cfg = config_from_dict(raw)
    except UserError as exc:
        assert_clean(exc)
        return
    event("accepted")
    # an accepted config is fully resolved: it survives the run directory's round trip unchanged
    again = config_from_dict(config_to_dict(cfg))
    assert config_to_dict(again) == config_to_dict(cfg)


@settings(max_examples=CASES["overrides"], **FAST)
@given(set_overrides())
def test_set_overrides(overrides):
    try:
        load_config(None, overrides)
        event("accepted")
    except UserError as exc:
        assert_clean(exc)


@settings(max_examples=CASES["yaml"], **FAST)
@given(yaml_documents())
def test_yaml_documents(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cfg.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        try:
            load_config(path)
            event("accepted")
        except UserError as exc:
            assert_clean(exc)
        assert sorted(os.listdir(d)) == ["cfg.yaml"]  # no tag ran code (os.system would leave nothing, but...)


CLI_WORDS = st.sampled_from(
    [
        "train",
        "evaluate",
        "describe",
        "interpolate",
        "grow",
        "compare",
        "bench",
        "report",
        "list",
        "data",
        "check",
        "models",
        "methods",
        "datasets",
        "--set",
        "--out",
        "--resume",
        "--overwrite",
        "--quiet",
        "--json",
        "--split",
        "--corruptions",
        "--severities",
        "--ood",
        "--points",
        "--member",
        "--members",
        "--children",
        "--seeds",
        "--only",
        "--root",
        "--corruption-seed",
        "--corruption-max-images",
        "--ood-max-images",
        "--precision",
        "test",
        "val",
        "bf16",
        "all",
        "-1",
        "0",
        "1",
        "99999999999999999999",
        "1e3",
        "x=1",
        "train.lr=1e12",
        "{missing}",
        "{dir}",
        "{fifo}",
        "{notrun}",
        "{bad_metrics}",
        "/dev/zero",
        "",
        "\udcff",
    ]
)


@pytest.fixture(scope="module")
def cli_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-fuzz")
    (root / "dir").mkdir()
    os.mkfifo(root / "fifo")
    (root / "notrun").mkdir()
    (root / "notrun" / "junk.txt").write_text("x")
    (root / "bad").mkdir()
    (root / "bad" / "metrics.json").write_text('{"metrics": {"accuracy": "x"}, "costs": []}')
    return {
        "{missing}": str(root / "missing.yaml"),
        "{dir}": str(root / "dir"),
        "{fifo}": str(root / "fifo"),
        "{notrun}": str(root / "notrun"),
        "{bad_metrics}": str(root / "bad"),
    }


@settings(max_examples=CASES["cli"], **FAST)
@given(argv=st.lists(CLI_WORDS, min_size=0, max_size=7))
def test_cli_arguments(cli_paths, argv):
    """main() never raises and never runs long: no generated argv names a runnable config or a finished run."""
    from ensemblekit.cli import main

    argv = [cli_paths.get(a, a) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    assert code in (0, 1, 2), (argv, code)
    event(f"exit {code}")
    if code == 2:
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and len(lines[0]) < 500, (argv, err.getvalue()[:500])


@settings(max_examples=CASES["images"], **FAST)
@given(data=image_bytes(), name=st.binary(min_size=1, max_size=12))
def test_image_folder_files(data, name):
    from ensemblekit.data.image_folder import decode_images, scan_image_folder

    safe = bytes(b for b in name if b not in b"/\x00") or b"x"
    with tempfile.TemporaryDirectory() as d:
        for split in (b"train", b"test"):
            folder = os.path.join(os.fsencode(d), split, safe)
            os.makedirs(folder)
            with open(os.path.join(folder, safe + b".png"), "wb") as f:
                f.write(data)
        try:
            scan = scan_image_folder(Path(d))
            images = decode_images(scan.files["train"])
        except UserError as exc:
            assert_clean(exc)
            return
        event("decoded")
        assert images.dtype.name == "uint8" and images.shape[1] == 3


@settings(max_examples=200, **FAST)
@given(VALUE_TEXT)
def test_set_values_of_every_known_field_type(value):
    """Every field of every section with one hostile shell value (the --set path that crashed most often)."""
    for key in (
        "train.seed",
        "model.width",
        "train.warmup_epochs",
        "runtime.num_threads",
        "data.train_size",
        "train.lr",
        "method.members",
        "train.epochs",
        "data.classes",
        "train.milestones",
        "runtime.devices",
    ):
        try:
            load_config(None, [f"{key}={value}"])
        except UserError as exc:
            assert_clean(exc)


@settings(max_examples=60, **FAST)
@given(method_configs())
def test_accepted_method_configs_build(raw):
    """What validation accepts must build: ``describe`` (build the ensemble, count its costs) succeeds or refuses
    in one line; a crash here is a config that would be accepted and then fail in the middle of a run."""
    from ensemblekit.runs import describe

    try:
        cfg = config_from_dict(raw)
    except UserError as exc:
        assert_clean(exc)
        return
    try:
        info = describe(cfg)
    except UserError as exc:
        event("refused at build")
        assert_clean(exc)
        return
    event("built")
    assert info["num_members"] >= 1 and info["inference_flops"] > 0
