"""``ensemblekit.load(run_dir).predict(images)`` and ``ensemblekit predict``: issue 17 item 3."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import ensemblekit
from ensemblekit.atomic import atomic_torch_save
from ensemblekit.data import load_data
from ensemblekit.data.images import images_to_tensor, resize_and_crop
from ensemblekit.errors import UserError
from ensemblekit.predictor import uncertainty
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import train
from ensemblekit.runs.loading import load_run
from ensemblekit.training.checkpoint import load_checkpoint
from tests.conftest import run_cli, tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "run"
    cfg = config_from_dict(tiny_config(method={"name": "deep_ensemble", "members": 2}, train={"epochs": 1}))
    train(cfg, out, quiet=True)
    return out


def test_predict_equals_the_runs_own_evaluation(run_dir):
    run = load_run(run_dir)
    expected = run.member_probs(run.data.test)
    out = ensemblekit.load(run_dir, device="cpu").predict(run.data.test.images)
    assert out.member_probs.shape == (2, len(run.data.test), 10)
    torch.testing.assert_close(out.member_probs, expected)
    torch.testing.assert_close(out.probs, expected.mean(dim=0))
    assert out.labels == [run.data.classes[int(i)] for i in expected.mean(dim=0).argmax(-1)]


def test_model_file_alone_suffices_and_records_the_inputs(run_dir, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    (moved / "config.yaml").unlink()  # nothing but model.pt
    predictor = ensemblekit.load(moved, device="cpu")
    run = load_run(run_dir)
    assert predictor.classes == run.data.classes
    assert predictor.mean == pytest.approx(run.data.mean) and predictor.std == pytest.approx(run.data.std)
    assert predictor.image_shape == (3, 32, 32)
    assert predictor.method == "deep_ensemble" and predictor.options["members"] == 2
    assert predictor.num_members == 2 and predictor.combine == "probs"


def test_old_model_files_without_inputs_still_load(run_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    state = load_checkpoint(old / "model.pt")
    for key in ("config", "inputs", "combine", "num_members", "identity"):
        state.pop(key)
    atomic_torch_save(old / "model.pt", state)
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    a = ensemblekit.load(old, device="cpu").predict(x)
    b = ensemblekit.load(run_dir, device="cpu").predict(x)
    torch.testing.assert_close(a.member_probs, b.member_probs)
    assert a.classes == b.classes


def test_inputs_tensor_pil_path_folder_agree(run_dir, tmp_path):
    predictor = ensemblekit.load(run_dir, device="cpu")
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    chw = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    (tmp_path / "imgs").mkdir()
    Image.fromarray(pixels).save(tmp_path / "imgs" / "a.png")
    by_tensor = predictor.predict(chw)
    by_pil = predictor.predict(Image.fromarray(pixels))
    by_path = predictor.predict(str(tmp_path / "imgs" / "a.png"))
    by_folder = predictor.predict(tmp_path / "imgs")
    for other in (by_pil, by_path, by_folder):
        torch.testing.assert_close(other.member_probs, by_tensor.member_probs)


def test_other_sizes_are_resized_to_cover_and_centre_cropped():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 80, 3), dtype=np.uint8))  # H=40, W=80
    out = resize_and_crop(image, (32, 32))
    assert out.size == (32, 32)
    expected = image.resize((64, 32), Image.Resampling.BILINEAR).crop((16, 0, 48, 32))
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    batch = images_to_tensor([image, torch.zeros(3, 32, 32, dtype=torch.uint8)], (32, 32))
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == torch.uint8
    assert torch.equal(batch[0], torch.from_numpy(np.array(expected)).permute(2, 0, 1))


def test_bad_inputs_are_one_line_user_errors(run_dir):
    predictor = ensemblekit.load(run_dir, device="cpu")
    with pytest.raises(UserError, match="uint8"):
        predictor.predict(torch.rand(2, 3, 32, 32))
    with pytest.raises(UserError, match=r"\[N, 3, H, W\]"):
        predictor.predict(torch.zeros(2, 5, 32, 32, dtype=torch.uint8))
    with pytest.raises(UserError, match="no such image"):
        predictor.predict("/nonexistent/cat.jpg")
    with pytest.raises(UserError, match=r"no model\.pt"):
        ensemblekit.load(run_dir.parent / "missing")
    with pytest.raises(UserError, match="unknown device"):
        ensemblekit.load(run_dir, device="gpu9")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            ensemblekit.load(run_dir, device="cuda")


def test_uncertainty_formulas():
    member = torch.tensor([[[0.9, 0.1], [0.5, 0.5]], [[0.1, 0.9], [0.5, 0.5]]], dtype=torch.float64)
    probs, entropy, mi = uncertainty(member)
    torch.testing.assert_close(probs, torch.full((2, 2), 0.5))
    h_member = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    assert entropy.tolist() == pytest.approx([np.log(2), np.log(2)], rel=1e-6)
    assert mi.tolist() == pytest.approx([np.log(2) - h_member, 0.0], abs=1e-6)
    _, _, single_mi = uncertainty(member[:1])
    assert single_mi.abs().max() < 1e-7  # one member: no disagreement


def test_cli_predict_writes_csv(run_dir, tmp_path):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    rng = np.random.default_rng(2)
    for name, size in (("a.png", (32, 32)), ("sub/b.jpg", (48, 64))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(tmp_path / "imgs" / name)
    out = tmp_path / "preds.csv"
    proc = run_cli("predict", str(run_dir), str(tmp_path / "imgs"), "--out", str(out), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["image"].endswith(n) for r, n in zip(rows, ("a.png", "b.jpg"))] == [True, True]
    probs = [[float(r[f"p_pattern_{k}"]) for k in range(10)] for r in rows]
    assert all(abs(sum(p) - 1) < 1e-4 for p in probs)
    assert all(r["prediction"] == f"pattern_{int(np.argmax(p))}" for r, p in zip(rows, probs))
    bad = run_cli("predict", str(run_dir), str(tmp_path / "nope.png"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_distillation_run_loads_without_its_teacher_run(tmp_path):
    quick = {"epochs": 1, "max_steps_per_epoch": 2}
    train(config_from_dict(tiny_config(train=quick)), tmp_path / "teacher", quiet=True)
    cfg = tiny_config(
        method={"name": "distillation", "members": 2, "teacher_run": str(tmp_path / "teacher")}, train=quick
    )
    train(config_from_dict(cfg), tmp_path / "student", quiet=True)
    shutil.rmtree(tmp_path / "teacher")  # prediction needs only the students
    run_accuracy = json.loads((tmp_path / "student" / "metrics.json").read_text())["metrics"]["accuracy"]
    predictor = ensemblekit.load(tmp_path / "student", device="cpu")
    data = load_data("synthetic", train_size=192, test_size=64)
    out = predictor.predict(data.test.images)
    assert predictor.method == "distillation" and out.member_probs.shape == (2, 64, 10)
    assert float((out.predicted == data.test.labels).float().mean()) == pytest.approx(run_accuracy)
