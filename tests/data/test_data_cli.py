"""``ensemblekit data check`` on generated official-format files (in-process, so MD5 sums can be patched)."""

from ensemblekit.cli import main


def test_data_check_reports_location_counts_and_checksums(tmp_path, make_cifar, capsys):
    root = tmp_path / "root"
    made = make_cifar(root, "cifar10", per_class=1)
    assert main(["data", "check", "--root", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    line = next(x for x in out if x.startswith("cifar10 "))
    assert "found (official)" in line and str(made["folder"]) in line
    assert "50000 train / 10000 test" in line and "checksum ok" in line  # official counts, vouched for by MD5
    assert "not found" in next(x for x in out if x.startswith("cifar100"))


def test_data_check_names_the_file_whose_checksum_fails(tmp_path, make_cifar, capsys):
    root = tmp_path / "root"
    made = make_cifar(root, "cifar10", per_class=1)
    (made["folder"] / "data_batch_3").write_bytes(b"corrupted")
    assert main(["data", "check", "--root", str(root)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("cifar10 "))
    assert "mismatch" in line and "data_batch_3" in line
