"""Runs that cannot lie or escape: each case reproduces a way to write outside the run
directory or to get a silently wrong number, and checks the fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import qbench.plugins
from qbench.images import BadImageError, list_images, load_image_u8
from qbench.plan.matrix import MatrixError, load_matrix
from qbench.plan.preflight import PreflightError
from qbench.results import RunDir, RunDirError
from qbench.run.runner import RunError, run_matrix

from .conftest import make_distribution, run_command
from .test_runner import read_csv, tiny


def quiet(m, out, **kw):
    return run_matrix(
        m,
        out,
        **{"workers": 0, "device": "cpu", "show_progress": False, "echo": lambda *_: None, **kw},
    )


def start_run(matrix, out, **popen) -> subprocess.Popen:
    """``qbench run MATRIX --out OUT`` in the background, output on its stdout pipe."""
    return subprocess.Popen(
        run_command(matrix, out),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def qbench_cli(*args, cwd=None, env=None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "qbench.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=env,
        **kw,
    )


# -- security -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "/some/dir", "a/b", "x\x00y", ".hidden", ""])
def test_run_name_cannot_be_a_path(tmp_path, registry, name):
    p = tiny(tmp_path)
    p.write_text(f"name = {json.dumps(name)}\n" + p.read_text().replace('name = "tiny"\n', ""))
    with pytest.raises(MatrixError, match=r"m\.toml: name: expected a run name"):
        load_matrix(p, registry)
    out = qbench_cli("validate", str(p))
    assert out.returncode == 2 and "name" in out.stderr and "Traceback" not in out.stderr


def test_default_name_from_an_odd_file_name_is_made_safe(tmp_path, registry):
    p = tiny(tmp_path, name="my matrix (v2).toml")
    p.write_text(p.read_text().replace('name = "tiny"\n', ""))
    assert load_matrix(p, registry).name == "my-matrix-v2-"


# -- one matrix per run directory, a lock, leftovers ---------------------------------


def test_one_matrix_per_directory_append_and_force(tmp_path, registry):
    out = tmp_path / "run"
    a = load_matrix(tiny(tmp_path, steps=2), registry)
    b = load_matrix(tiny(tmp_path, steps=3, name="b.toml"), registry)
    quiet(a, out)
    with pytest.raises(RunDirError) as info:
        quiet(b, out)
    msg = str(info.value)
    assert "m.toml" in msg and "b.toml" in msg and "--append" in msg and "--force" in msg
    assert len(read_csv(out / "results.csv")) == 1  # nothing was merged
    with pytest.raises(RunError, match="noise"):  # the same label twice: refused first
        quiet(b, out, append=True)
    assert len(read_csv(out / "results.csv")) == 1
    p = tiny(tmp_path, '[{ name = "noise", label = "noise-b" }]', steps=3, name="b.toml")
    quiet(load_matrix(p, registry), out, append=True)
    rows = read_csv(out / "results.csv")
    assert len(rows) == 2 and len({r["config_id"] for r in rows}) == 2
    from qbench.report import write_report

    rep = write_report(out, anchor="noise")
    text = (out / "report.md").read_text()
    assert "noise-b" in text and {r["quantizer"] for r in rep.bd_rows} <= {"noise", "noise-b"}
    c = load_matrix(tiny(tmp_path, steps=4, name="c.toml"), registry)
    quiet(c, out, force=True)  # a third matrix: the earlier run is set aside, not deleted
    assert len(read_csv(out / "results.csv")) == 1
    moved = list((out / "superseded").iterdir())
    assert len(moved) == 1 and len(list((moved[0] / "rows").glob("*.json"))) == 2


def test_a_run_directory_has_one_owner(tmp_path, registry):
    out = tmp_path / "run"
    m = load_matrix(tiny(tmp_path, steps=1), registry)
    rd = RunDir(out)
    rd.ensure()
    with (
        rd.lock(),
        pytest.raises(RunDirError, match=f"in use by another qbench run \\(pid {os.getpid()}\\)"),
    ):
        quiet(m, out)
    # a lock holder killed with -9 leaves no stale lock
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from qbench.results import RunDir\nimport time\nwith RunDir({str(out)!r}).lock(): print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunDirError):
        quiet(m, out)
    holder.kill()
    holder.wait()
    assert quiet(m, out).statuses == {"ok": 1}


def test_leftovers_are_cleaned_and_report_rebuilds_from_rows(tmp_path, registry):
    from qbench.report import write_report

    out = tmp_path / "run"
    m = load_matrix(tiny(tmp_path, steps=1), registry)
    quiet(m, out)
    (out / ".results.csv.abc.tmp").write_text("partial")
    (out / "rows" / ".x.json.def.tmp").write_text("partial")
    quiet(m, out)
    assert not list(out.glob(".*.tmp")) and not list((out / "rows").glob(".*.tmp"))
    (out / "results.csv").unlink()  # killed before the first merge
    rep = write_report(out, anchor="noise")
    assert "noise" in rep.summary


# -- averages that say what they averaged ---------------------------------------------


def test_rows_say_what_was_skipped_and_flag_nonfinite_values(tmp_path, registry, install_plugin):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "ok.png")
    for i in range(3):
        (folder / f"bad{i}.png").write_bytes(b"not an image")
    p = tiny(tmp_path, '["noise", "nanq"]')
    p.write_text(
        p.read_text()
        .replace(
            'datasets = [{ name = "embedded", split = "eval" }]',
            f'datasets = [{{ name = "folder", path = "{folder}" }}]',
        )
        .replace("max_images = 1", "max_images = 0")
    )
    install_plugin("qbench-naneval", {"naneval": NANEVAL}, {"naneval": "naneval"})
    m = load_matrix(p, qbench.plugins.get_plugins().registry)
    lines = []
    s = run_matrix(m, tmp_path / "run", device="cpu", show_progress=False, echo=lines.append)
    warned = [line for line in lines if "): skipped" in line]  # (the test's folder says skipped)
    assert len(warned) == 3 and all("bad" in line for line in warned)  # once each
    rows = {r["quantizer"]: r for r in read_csv(tmp_path / "run" / "results.csv")}
    assert rows["noise"]["status"] == "ok" and rows["noise"]["images"] == "1"
    assert all(f"bad{i}.png" in rows["noise"]["skipped"] for i in range(3))
    assert rows["nanq"]["status"] == "nonfinite" and "psnr 1/1" in rows["nanq"]["nonfinite"]
    assert s.statuses == {"ok": 1, "nonfinite": 1}


NANEVAL = '''
import qbench

class NaNQ(qbench.Quantizer):
    """Trains as noise would; NaN reconstructions at test time."""
    def forward(self, y, means=None):
        out = super().forward(y, means)
        if not self.training:
            return qbench.Quantized(rate=out.rate, dist=out.dist * float("nan"))
        return out

@qbench.hookimpl
def qbench_register_quantizers(register):
    register("nanq", NaNQ)
'''


@pytest.mark.parametrize(
    "old,new,key",
    [
        ("max_images = 1", "max_images = -1", "eval.max_images"),
        ('metrics = ["bpp", "bpp_bitstream", "psnr"]', "metrics = []", "eval.metrics"),
        ("lambdas = [0.01]", "lambdas = [inf]", "matrix.lambdas[0]"),
        ("lr = 1e-3", "lr = inf", "train.lr"),
        ("lr = 1e-3", "lr = 1e-3\nclip_max_norm = -1.0", "train.clip_max_norm"),
        ("lr = 1e-3", "lr = 1e-3\nlog_every = -5", "train.log_every"),
    ],
)
def test_bad_values_are_refused_naming_the_key(tmp_path, registry, old, new, key):
    p = tiny(tmp_path)
    p.write_text(p.read_text().replace(old, new))
    with pytest.raises(MatrixError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_matrix(p, registry)


@pytest.mark.parametrize(
    "old,new,where",
    [
        ("N = 16", "N = 0", "matrix.backbones"),
        ('quantizers = ["noise"]', 'quantizers = [{ name = "noise", latents = ["w"] }]', "latents"),
        ("N = 16, M = 16", 'N = 16, M = 16, checkpoint = "nope.pt"', "nope.pt"),
        ("crop = 64", "crop = 4096", "train.crop"),
    ],
)
def test_knowable_failures_stop_before_any_job(tmp_path, registry, old, new, where):
    p = tiny(tmp_path)
    p.write_text(p.read_text().replace(old, new))
    m = load_matrix(p, registry)
    with pytest.raises(PreflightError, match=where):
        quiet(m, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing was written
    out = qbench_cli("validate", str(p))
    assert out.returncode == 2 and where in out.stderr and "Traceback" not in out.stderr


def test_job_identity_follows_the_data(tmp_path, registry, monkeypatch):
    data = tmp_path / "proj" / "imgs"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data / "a.png")
    p = tiny(tmp_path / "proj")
    p.write_text(
        p.read_text().replace(
            '{ name = "embedded", split = "eval" }', '{ name = "folder", path = "imgs" }'
        )
    )
    ids = []
    for cwd in (tmp_path, tmp_path / "proj"):  # relative to the matrix file, not the cwd
        monkeypatch.chdir(cwd)
        ids.append(load_matrix(p, registry).jobs[0].job_id)
    assert ids[0] == ids[1]
    time.sleep(0.01)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data / "b.png")
    assert load_matrix(p, registry).jobs[0].job_id != ids[0]
    # a checkpoint is identified by its content too, and resolved next to the matrix
    torch.manual_seed(0)
    net = registry.build("backbone", "bmshj2018-factorized", N=16, M=16).net
    torch.save(net.state_dict(), tmp_path / "proj" / "w.pt")
    p.write_text(p.read_text().replace("N = 16, M = 16", 'N = 16, M = 16, checkpoint = "w.pt"'))
    first = load_matrix(p, registry).jobs[0]
    assert first.backbone.params["checkpoint"] == str(tmp_path / "proj" / "w.pt")
    # the same bytes with another modification time (a fresh clone, a copy): the same ids
    os.utime(tmp_path / "proj" / "w.pt", ns=(1, 1))
    os.utime(data / "b.png", ns=(1, 1))
    again = load_matrix(p, registry).jobs[0]
    assert (again.train_id, again.job_id) == (first.train_id, first.job_id)
    # other bytes: another model
    net.g_a[0].bias.data += 1
    torch.save(net.state_dict(), tmp_path / "proj" / "w.pt")
    assert load_matrix(p, registry).jobs[0].train_id != first.train_id


# -- faults and signals --------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_workers_die_with_their_parent(tmp_path):
    parent = start_run(tiny(tmp_path, steps=100000), tmp_path / "run")
    deadline = time.time() + 120
    workers: list[int] = []
    while time.time() < deadline and not workers:
        time.sleep(0.5)
        workers = [
            c
            for c in _children(parent.pid)
            if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()
        ]
    assert workers, "no worker started"
    parent.kill()
    parent.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers)
    assert not list((tmp_path / "run" / "rows").glob("*.json"))  # no row after the parent died


def test_a_worker_is_tied_to_its_parent_before_it_imports_torch():
    """The spawned worker's target lives in a module that imports nothing heavy, so a qbench
    process killed while its workers still import torch (seconds on a busy machine) leaves
    none behind."""
    code = (
        "import sys, qbench.run.lifeline as l; "
        "assert l.worker_entry.__module__ == 'qbench.run.lifeline'; "
        "heavy = [m for m in ('torch', 'compressai', 'qbench.run.executors') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX process groups")
def test_sigint_ignored_by_the_parent_is_ignored_by_its_workers(tmp_path):
    proc = start_run(
        tiny(tmp_path, steps=150),
        tmp_path / "run",
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as `cmd &` in a script
    )
    for line in proc.stdout:
        if "start" in line:
            break
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    rows = read_csv(tmp_path / "run" / "results.csv")
    assert [r["status"] for r in rows] == ["ok"]


def test_merge_failure_keeps_rows_and_says_why(tmp_path, registry, monkeypatch):
    import errno

    import qbench.results as results

    real = results.atomic_write_text

    def full(path, text):
        if Path(path).name == "results.csv":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, text)

    monkeypatch.setattr(results, "atomic_write_text", full)
    m = load_matrix(tiny(tmp_path, '["noise", "ste"]', steps=1), registry)
    lines: list[str] = []
    from qbench.run.runner import RunError

    with pytest.raises(RunError, match="No space left on device"):
        run_matrix(m, tmp_path / "run", device="cpu", show_progress=False, echo=lines.append)
    assert any("could not merge results.csv" in line for line in lines)
    assert len(list((tmp_path / "run" / "rows").glob("*.json"))) == 2


# -- bad input, clear errors -------------------------------------------------------------


def test_matrix_encoding(tmp_path, registry):
    p = tiny(tmp_path)
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())  # a BOM is fine
    assert load_matrix(p, registry).name == "tiny"
    p.write_bytes(p.read_bytes().replace(b'"tiny"', b'"t\xe9"'))
    with pytest.raises(MatrixError, match="not UTF-8 text"):
        load_matrix(p, registry)


def test_cli_bad_arguments_are_one_line_errors(tmp_path):
    p = tiny(tmp_path, steps=1)
    out = qbench_cli("run", str(p), "--workers", "-1")
    assert out.returncode == 2 and "--workers: expected a whole number >= 0, got -1" in out.stderr
    (tmp_path / "file").write_text("x")
    out = qbench_cli("run", str(p), "--out", str(tmp_path / "file" / "run"))
    assert out.returncode == 2 and "cannot create or write" in out.stderr
    assert "Traceback" not in out.stderr


def test_report_of_broken_files(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "results.csv").write_bytes(bytes(range(256)) * 4)
    out = qbench_cli("report", str(d))
    assert out.returncode == 2 and "not a readable results table" in out.stderr
    (d / "results.csv").write_text(
        "backbone,quantizer,lambda,dataset,seed,job_id,status,bpp,psnr\nb,noise,0.01,d,0,a,ok,0.5,30\n"
    )
    (d / "manifest.json").write_text("{ not json")
    before = sorted(p.name for p in d.iterdir())
    out = qbench_cli("report", str(d), "--format", "csv")
    assert out.returncode == 0 and sorted(p.name for p in d.iterdir()) == before  # wrote nothing
    out = qbench_cli("report", str(d))
    assert out.returncode == 0 and "not readable JSON" in (d / "report.md").read_text()


SYSEXIT = "raise SystemExit(3)\n"
SPECNAME = """
import qbench

@qbench.hookimpl(specname="qbench_register_quantizers")
def add_mine(register):
    register("mine", qbench.Quantizer)
"""


def test_systemexit_plugin_and_specname_hook(tmp_path):
    from qbench.plugins import load_plugins

    site = make_distribution(tmp_path / "s", "qbench-exit", {"exits": SYSEXIT}, {"exits": "exits"})
    make_distribution(site, "qbench-spec", {"spec": SPECNAME}, {"spec": "spec"})
    sys.path.insert(0, str(site))
    try:
        ps = load_plugins()
    finally:
        sys.path.remove(str(site))
        for mod in ("exits", "spec"):
            sys.modules.pop(mod, None)
    problems = {p.plugin: p.reason for p in ps.problems}
    assert "SystemExit" in problems["exits"]
    assert ("quantizer", "mine") in ps.registry


# -- images -----------------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    x = load_image_u8(tmp_path / "r.jpg")
    assert tuple(x.shape[-2:]) == (40, 20)  # upright: taller than wide
    assert x[:, :20].float().mean() > 200 and x[:, 20:].float().mean() < 50  # white on top


def test_decompression_bomb_is_an_unreadable_file(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImageError, match="bomb.png"):
        load_image_u8(tmp_path / "bomb.png")


def test_names_are_relative_and_symlinked_folders_followed(tmp_path, registry):
    root = tmp_path / "set"
    for sub in ("a", "b"):
        (root / sub).mkdir(parents=True)
        Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(root / sub / "img.png")
    other = tmp_path / "elsewhere"
    other.mkdir()
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(other / "far.png")
    (root / "linked").symlink_to(other, target_is_directory=True)
    (other / "loop").symlink_to(root, target_is_directory=True)  # a loop ends
    assert len(list_images(root)) == 3
    ds = registry.build("dataset", "folder", path=str(root))
    assert sorted(ds.names) == ["a/img.png", "b/img.png", "linked/far.png"]


def test_images_over_max_pixels_are_skipped_and_named(tmp_path, registry):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "small.png")
    Image.fromarray(rng.integers(0, 256, (128, 192, 3), dtype=np.uint8)).save(folder / "big.png")
    p = tiny(tmp_path)
    p.write_text(
        p.read_text()
        .replace(
            '{ name = "embedded", split = "eval" }', f'{{ name = "folder", path = "{folder}" }}'
        )
        .replace("max_images = 1", "max_images = 0\nmax_pixels = 10000")
    )
    quiet(load_matrix(p, registry), tmp_path / "run")
    row = read_csv(tmp_path / "run" / "results.csv")[0]
    assert row["status"] == "ok" and row["images"] == "1"
    assert "big.png" in row["skipped"] and "max_pixels" in row["skipped"]
