"""A study file runs several matrices with one command, each into a folder of its own,
and checks every part before the first job of any."""

from __future__ import annotations

import pytest

from qbench.cli import main
from qbench.plan.matrix import MatrixError
from qbench.plan.study import read_study

from .test_runner import tiny


def _parts(tmp_path):
    a = tiny(tmp_path, steps=1, name="a.toml")
    a.write_text(a.read_text().replace('name = "tiny"', 'name = "part-a"'))
    b = tiny(tmp_path, '["ste"]', steps=1, name="b.toml")
    b.write_text(b.read_text().replace('name = "tiny"', 'name = "part-b"'))
    study = tmp_path / "study.toml"
    study.write_text('name = "both"\nparts = ["a.toml", "b.toml"]\n')
    return study


def test_a_study_runs_its_parts_into_folders_of_their_own(tmp_path, capsys):
    study = _parts(tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(study), "--out", str(out), "--workers", "0", "--no-progress"]) == 0
    for part, label in (("part-a", "noise"), ("part-b", "ste")):
        text = (out / part / "results.csv").read_text()
        assert f",{label}," in text and (out / part / "report.md").is_file()
    capsys.readouterr()
    main(["run", str(study), "--out", str(out), "--workers", "0", "--no-progress"])
    said = capsys.readouterr()
    assert (said.out + said.err).count("1 already finished, 0 to run") == 2  # both resumed


def test_every_part_is_checked_before_any_job(tmp_path, capsys):
    study = _parts(tmp_path)
    b = tmp_path / "b.toml"
    b.write_text(b.read_text().replace('"ste"', '{ name = "ste", scale_bound = 0.2 }'))
    out = tmp_path / "out"
    assert main(["run", str(study), "--out", str(out), "--workers", "0", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert f"{b}: matrix.quantizers ('ste').scale_bound" in err
    assert not (out / "part-a").exists()  # part a never started


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('parts = ["a.toml"]\n[matrix]\n', "matrix: a study file holds only"),
        ("parts = []\n", "parts: expected a list of matrix files"),
        ('parts = ["nowhere.toml"]\n', r"parts\[0\]: no matrix file"),
        ('parts = ["a.toml", "a.toml"]\n', r"parts\[1\]: 'a.toml' is named twice"),
    ],
)
def test_bad_study_files_are_refused_naming_the_key(tmp_path, text, match):
    _parts(tmp_path)
    study = tmp_path / "s.toml"
    study.write_text(text)
    with pytest.raises(MatrixError, match=match) as err:
        read_study(study)
    assert str(study) in str(err.value)


def test_two_parts_with_one_run_name_are_refused(tmp_path, capsys):
    study = _parts(tmp_path)
    b = tmp_path / "b.toml"
    b.write_text(b.read_text().replace('name = "part-b"', 'name = "part-a"'))
    assert main(["validate", str(study)]) != 0
    assert "two parts have the run name 'part-a'" in capsys.readouterr().err


def test_a_matrix_is_not_a_study(tmp_path):
    assert read_study(tiny(tmp_path)) is None and read_study(None) is None
