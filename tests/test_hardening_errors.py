"""Bad input meets a one-line error (exit 2), never a traceback; an internal error exits 3
and says where its traceback is; labels every file system and table can carry; an
``--append`` that would mix two runs' labels is refused before any job; an unusable
snapshot or checkpoint record is set aside and the job starts fresh."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.test_cli import cli

DATA = Path(__file__).resolve().parents[1] / "qbench" / "data" / "images"

TINY = """
name = "tiny"
[matrix]
backbones = [{{ name = "bmshj2018-factorized", N = 16, M = 16 }}]
quantizers = {quantizers}
lambdas = [0.01]
datasets = [{{ name = "embedded", split = "eval" }}]
seeds = [0]
[train]
steps = 2
batch_size = 2
crop = 64
{train}
[eval]
metrics = ["bpp", "psnr"]
max_images = 1
"""


def tiny(folder: Path, quantizers: str = '["noise"]', train: str = "", name="m.toml") -> Path:
    p = folder / name
    p.write_text(TINY.format(quantizers=quantizers, train=train))
    return p


def one_line_error(out, *words: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("qbench: error: "), out.stderr
    for w in words:
        assert w in out.stderr, (w, out.stderr)


# -- labels and names (validate) ------------------------------------------------------------
@pytest.mark.parametrize("label", ["x" * 300, "a=b", "a|b", "a\nb", "a..b", "a/b", "", "a b"])
def test_labels_are_restricted(tmp_path, label):
    q = f'[{{ name = "noise", label = {json.dumps(label)} }}]'
    out = cli("validate", str(tiny(tmp_path, quantizers=q)))
    one_line_error(out, "matrix.quantizers[0].label")


def test_derived_and_plain_labels_still_pass(tmp_path):
    q = '[{ name = "noise", label = "noise-w0.5+a@b#1_x.y" }]'
    out = cli("validate", str(tiny(tmp_path, quantizers=q)))
    assert out.returncode == 0, out.stderr


def test_run_name_is_restricted(tmp_path):
    p = tiny(tmp_path)
    p.write_text(p.read_text().replace('name = "tiny"', f'name = "{"n" * 65}"', 1))
    one_line_error(cli("validate", str(p)), "name")
    p.write_text(p.read_text().replace(f'name = "{"n" * 65}"', 'name = "a..b"', 1))
    one_line_error(cli("validate", str(p)), "name")


# -- matrix values --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [2**64, 2**70, -(2**63) - 1])
def test_seeds_out_of_range(tmp_path, seed):
    out = cli("validate", str(tiny(tmp_path)), "--set", f"matrix.seeds=[{seed}]")
    one_line_error(out, "matrix.seeds[0]")


def test_set_value_with_a_newline_is_refused(tmp_path):
    out = cli("validate", str(tiny(tmp_path)), "--set", "train.steps=3\ntrain.lr=5")
    one_line_error(out, "--set", "newline")


def test_dataset_path_naming_a_file(tmp_path):
    (tmp_path / "a.png").write_bytes((DATA / "eval-kodim15.png").read_bytes())
    p = tiny(tmp_path, train='dataset = { name = "folder", path = "a.png" }')
    one_line_error(cli("run", str(p), "--out", str(tmp_path / "r")), "is a file", "a.png")


def test_folder_of_unreadable_images_names_them(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "bad1.png").write_bytes(b"not a png")
    (imgs / "bad2.jpg").write_bytes(b"")
    p = tiny(tmp_path, train='dataset = { name = "folder", path = "imgs" }')
    one_line_error(cli("run", str(p), "--out", str(tmp_path / "r")), "bad1.png", "bad2.jpg")


def test_unknown_user_in_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tiny(tmp_path, train='dataset = { name = "folder", path = "~nosuchuser-qb/x" }')
    one_line_error(cli("validate", str(p)), "train.dataset.path", "~nosuchuser-qb")
    out = cli("run", str(tiny(tmp_path)), "--out", "~nosuchuser-qb/run")
    one_line_error(out, "--out", "~nosuchuser-qb")
    assert not (tmp_path / "~nosuchuser-qb").exists()


def test_qbench_threads_not_a_number(tmp_path, monkeypatch):
    from qbench.run.executors.devices import worker_threads

    monkeypatch.setenv("QBENCH_THREADS", "abc")
    with pytest.raises(Exception) as info:
        worker_threads()
    from qbench.registry import QbenchError

    assert isinstance(info.value, QbenchError) and "QBENCH_THREADS" in str(info.value)
    monkeypatch.setenv("QBENCH_THREADS", "-2")
    with pytest.raises(QbenchError):
        worker_threads()
    monkeypatch.setenv("QBENCH_THREADS", "0")
    assert worker_threads() == 1
    monkeypatch.setenv("QBENCH_THREADS", "3")
    assert worker_threads() == 3
    monkeypatch.setenv("QBENCH_THREADS", "abc")
    one_line_error(
        cli("run", str(tiny(tmp_path)), "--out", str(tmp_path / "r"), "--device", "cpu"),
        "QBENCH_THREADS",
    )
    assert not (tmp_path / "r" / "rows").exists() or not list((tmp_path / "r" / "rows").iterdir())


# -- new-plugin -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["none", "true", "false", "print", "class"])
def test_new_plugin_python_names(tmp_path, name):
    out = cli("new-plugin", name, "--kind", "quantizer", "--out", str(tmp_path / "p"))
    one_line_error(out, repr(name))
    assert not (tmp_path / "p").exists()


def test_new_plugin_builtin_name(tmp_path):
    out = cli("new-plugin", "noise", "--kind", "quantizer", "--out", str(tmp_path / "p"))
    one_line_error(out, "'noise'", "registered by")
    assert not (tmp_path / "p").exists()


def test_new_plugin_bad_out(tmp_path):
    (tmp_path / "file").write_text("x")
    out = cli("new-plugin", "halfnoise2", "--kind", "quantizer", "--out", str(tmp_path / "file"))
    one_line_error(out, str(tmp_path / "file"))
    out = cli("new-plugin", "halfnoise2", "--kind", "quantizer", "--out", "/proc/qbench-x")
    one_line_error(out, "/proc/qbench-x")


# -- reference-curves -----------------------------------------------------------------------
def test_reference_curves_bad_dir_and_url(tmp_path):
    (tmp_path / "file").write_text("x")
    one_line_error(cli("reference-curves", "--dir", str(tmp_path / "file")), "--dir")
    out = cli("reference-curves", "--download", "--dir", str(tmp_path / "d"), "--url", "notaurl")
    one_line_error(out, "--url", "notaurl")
    out = cli("reference-curves", "--download", "--dir", str(tmp_path / "d"), "--url", "x{nope}")
    one_line_error(out, "--url")
    assert not (tmp_path / "d").exists() or not list((tmp_path / "d").iterdir())


@pytest.mark.parametrize(
    "text", ["not toml [", "commit = 1\n", '[curves.a]\nfile = 3\nbogus = "x"\n']
)
def test_malformed_reference_catalogue(tmp_path, monkeypatch, text):
    cat = tmp_path / "cat.toml"
    cat.write_text(text)
    monkeypatch.setenv("QBENCH_REFERENCE_CATALOGUE", str(cat))
    one_line_error(cli("reference-curves"), "QBENCH_REFERENCE_CATALOGUE", str(cat))


# -- export ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    out = cli(
        "run", str(tiny(root)), "--out", str(root / "run"), "--no-progress", "--device", "cpu"
    )
    assert out.returncode == 0, out.stderr
    return root / "run"


def test_export_bad_out(finished_run, tmp_path):
    base = ("export", str(finished_run), "--quantizer", "noise", "--lambda", "0.01", "--out")
    one_line_error(cli(*base, str(tmp_path)), str(tmp_path), "directory")
    one_line_error(cli(*base, "/proc/qbench-x/w.pt"), "/proc/qbench-x")
    assert cli(*base, str(tmp_path / "w.pt")).returncode == 0
    one_line_error(cli(*base, str(tmp_path), "--format", "compressai"), "directory")


def test_export_corrupt_checkpoint(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (ckpt,) = (run / "checkpoints").glob("*.pt")
    ckpt.write_bytes(b"garbage" * 10)
    out = cli("export", str(run), "--quantizer", "noise", "--lambda", "0.01", "--out", "w.pt")
    one_line_error(out, ckpt.name)


# -- exit codes -----------------------------------------------------------------------------
def test_disk_full_at_first_manifest_write(tmp_path, monkeypatch):
    import qbench.results

    real = qbench.results.atomic_write_text

    def full(path, text, *a, **kw):
        if Path(path).name == "manifest.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, text, *a, **kw)

    monkeypatch.setattr(qbench.results, "atomic_write_text", full)
    out = cli("run", str(tiny(tmp_path)), "--out", str(tmp_path / "r"), "--no-progress")
    one_line_error(out, "manifest.json", os.strerror(errno.ENOSPC))


def test_internal_error_exits_3_with_traceback_file(tmp_path, monkeypatch):
    import qbench.plan.matrix

    def boom(*a, **kw):
        raise ZeroDivisionError("deliberate")

    monkeypatch.setattr(qbench.plan.matrix, "load_matrix", boom)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    out = cli("validate")
    assert out.returncode == 3, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr and "internal error" in out.stderr
    (trace,) = tmp_path.glob("qbench-traceback-*.txt")
    assert str(trace) in out.stderr
    assert "ZeroDivisionError: deliberate" in trace.read_text()
    assert "exit status" in cli("--help").stdout


# -- --append with the same labels (item 10) ------------------------------------------------
def test_append_with_same_labels_is_refused_before_any_job(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = sorted(p.name for p in (run / "rows").iterdir())
    record = (run / "run.json").read_text()
    other = tiny(tmp_path, train="lr = 5e-4")  # another matrix, the same label 'noise'
    out = cli("run", str(other), "--out", str(run), "--append", "--no-progress", "--device", "cpu")
    one_line_error(out, "'noise'", "label")
    assert sorted(p.name for p in (run / "rows").iterdir()) == before
    assert (run / "run.json").read_text() == record


# -- unusable snapshots and checkpoint records (item 11) ------------------------------------
def _snapshot_run(folder: Path) -> tuple[Path, Path]:
    """A run whose training was cut after its snapshot: the final checkpoint and row are
    removed, a snapshot of step 1 stays."""
    p = tiny(folder, train="checkpoint_every = 1")
    return p, folder / "run"


def test_snapshot_missing_keys_starts_fresh(tmp_path):
    import hashlib

    import torch

    p, run = _snapshot_run(tmp_path)
    out = cli("run", str(p), "--out", str(run), "--no-progress", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    (row,) = (run / "rows").iterdir()
    train_id = json.loads(row.read_text())["train_id"]
    ckpts = run / "checkpoints"
    for f in list(ckpts.glob(f"{train_id}.*")):
        f.unlink()
    row.unlink()
    snap = ckpts / f"{train_id}.snap-a.pt"
    torch.save({"steps": 2, "step": 1}, snap)  # loads, has the right steps, lacks the rest
    data = snap.read_bytes()
    (ckpts / f"{train_id}.snap-a.json").write_text(
        json.dumps({"step": 1, "sha256": hashlib.sha256(data).hexdigest(), "time": 0})
    )
    out = cli("run", str(p), "--out", str(run), "--no-progress", "--device", "cpu")
    assert out.returncode == 0, out.stdout + out.stderr
    (row,) = (run / "rows").iterdir()
    got = json.loads(row.read_text())
    assert got["status"] == "ok" and "fresh start" in got["resumed"], got["resumed"]
    kept = [f.name for f in ckpts.iterdir() if "unusable" in f.name]
    assert kept, list(ckpts.iterdir())  # set aside, not deleted


def test_checkpoint_metadata_with_unknown_keys_is_produced_again(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (meta,) = (run / "checkpoints").glob("*.json")
    record = json.loads(meta.read_text())
    meta.write_text(json.dumps({**record, "bogus": 1}))
    (row,) = (run / "rows").iterdir()
    good = json.loads(row.read_text())
    # the checkpoint's row says it failed: --rerun-failed re-runs it
    row.write_text(json.dumps({**good, "status": "failed", "error": "x"}))
    out = cli(
        "run",
        str(tiny(tmp_path)),
        "--out",
        str(run),
        "--rerun-failed",
        "--no-progress",
        "--device",
        "cpu",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    got = json.loads(next((run / "rows").iterdir()).read_text())
    assert got["status"] == "ok" and "produced again" in got["resumed"], got["resumed"]
    assert any("unusable" in f.name for f in (run / "checkpoints").iterdir())


# -- a dataset folder holding the run directory (item 9) ------------------------------------
def test_folder_dataset_excludes_run_directories(tmp_path):
    from qbench_plugins.datasets import folder

    for f in ("train-kodim03.png", "train-kodim05.png"):
        shutil.copy(DATA / f, tmp_path / f)
    run = tmp_path / "runs" / "m"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"id": "0123456789ab", "name": "m"}))
    shutil.copy(DATA / "eval-kodim15.png", run / "rd_plot.png")
    ds = folder(str(tmp_path))
    assert sorted(p.name for p in ds.paths) == ["train-kodim03.png", "train-kodim05.png"]
    assert "runs/m" in ds.description and "run director" in ds.description
    # a folder that merely holds a file called run.json is a dataset folder like any other
    (run / "run.json").write_text("my own notes")
    assert len(folder(str(tmp_path))) == 3


def test_run_directory_inside_the_training_folder(tmp_path, monkeypatch):
    for f in ("train-kodim03.png", "train-kodim05.png"):
        shutil.copy(DATA / f, tmp_path / f)
    p = tiny(tmp_path, train='dataset = { name = "folder", path = "." }')
    monkeypatch.chdir(tmp_path)
    first = cli("run", str(p), "--no-progress", "--device", "cpu")  # into runs/tiny
    assert first.returncode == 0, first.stdout + first.stderr
    again = cli("run", str(p), "--no-progress", "--device", "cpu")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 to run" in again.stdout, again.stdout
