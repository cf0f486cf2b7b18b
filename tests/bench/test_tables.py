"""``ensemblekit compare``: the sparse-cost columns of the shared schema, and runs written before it."""

from __future__ import annotations

import json

from ensemblekit.bench.tables import comparison_table

DENSE = {"params": 1000, "unique_params": 1000, "inference_flops_vs_single": 1.0, "train_epoch_equivalents": 2.0}


def _run(tmp_path, name, method, **costs):
    run = tmp_path / name
    run.mkdir()
    record = {"method": method, "num_members": 3, "costs": {**DENSE, **costs}, "metrics": {"accuracy": 0.5}}
    (run / "metrics.json").write_text(json.dumps(record))
    return run


def _cells(table: str) -> dict[str, dict[str, str]]:
    lines = table.splitlines()
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def test_compare_shows_sparse_costs_and_reads_the_keys_of_older_fission_runs(tmp_path):
    new = _run(
        tmp_path,
        "sub",
        "subnetwork",
        inference_flops_sparse_vs_single=0.5,
        params_nonzero=600,
        train_epoch_equivalents_sparse=1.25,
    )
    old = _run(tmp_path, "nfe-old", "fission", sparse_inference_flops_vs_single=0.54, unpruned_params=700)
    dense = _run(tmp_path, "de", "deep_ensemble")
    cells = _cells(comparison_table([new, old, dense]))
    assert cells["sub"]["sparse FLOPs x single"] == "0.50" and cells["sub"]["sparse train epoch-eq"] == "1.25"
    assert cells["sub"]["nonzero params"] == "600"
    assert cells["nfe-old"]["sparse FLOPs x single"] == "0.54" and cells["nfe-old"]["nonzero params"] == "700"
    assert cells["nfe-old"]["sparse train epoch-eq"] == "-"  # older fission runs did not count it
    assert cells["de"]["sparse FLOPs x single"] == "-" and cells["de"]["train epoch-eq"] == "2.00"
    header = comparison_table([new]).splitlines()[0]
    assert header.index("train epoch-eq") < header.index("sparse FLOPs x single") < header.index("train s")


def test_compare_of_dense_runs_has_no_sparse_columns(tmp_path):
    table = comparison_table([_run(tmp_path, "de", "deep_ensemble")])
    assert "sparse" not in table and "nonzero" not in table
