"""Matrix validation: every bad input names the file and the key."""

from __future__ import annotations

import textwrap

import pytest

from qbench.plan.matrix import MatrixError, load_matrix

BASE = """
name = "t"
[matrix]
backbones = [{ name = "bmshj2018-factorized", N = 16, M = 16 }]
quantizers = ["noise", "ste", { name = "sua", label = "sua-plain", zero_center = false }]
lambdas = [0.001, 0.01]
datasets = ["embedded"]
seeds = [0, 1]
[train]
steps = 3
"""


def write(tmp_path, text, name="m.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def error(tmp_path, registry, text) -> str:
    p = write(tmp_path, text)
    with pytest.raises(MatrixError) as info:
        load_matrix(p, registry)
    msg = str(info.value)
    assert str(p) in msg
    return msg


def test_expansion_and_stable_ids(tmp_path, registry):
    m = load_matrix(write(tmp_path, BASE), registry)
    assert len(m.jobs) == 1 * 3 * 2 * 1 * 2
    ids = [j.job_id for j in m.jobs]
    assert len(set(ids)) == len(ids)
    again = load_matrix(write(tmp_path, BASE, "copy.toml"), registry)
    assert ids == [j.job_id for j in again.jobs]
    changed = load_matrix(
        write(tmp_path, BASE.replace("steps = 3", "steps = 4"), "c.toml"), registry
    )
    assert not set(ids) & {j.job_id for j in changed.jobs}
    assert m.jobs[0].train.lr == 1e-4 and m.report["anchor"] == "noise"
    assert {j.quantizer.label for j in m.jobs} == {"noise", "ste", "sua-plain"}


def test_malformed_toml_gives_line_and_column(tmp_path, registry):
    msg = error(tmp_path, registry, '[matrix]\nbackbones = ["a"\nquantizers = 3\n')
    assert "malformed TOML" in msg and "line" in msg and "column" in msg


def test_unknown_quantizer_suggests(tmp_path, registry):
    msg = error(tmp_path, registry, BASE.replace('"ste"', '"stee"'))
    assert "matrix.quantizers[1]" in msg and "'ste'" in msg


def test_unknown_parameter_names_key_path(tmp_path, registry):
    msg = error(tmp_path, registry, BASE.replace("zero_center = false", "zero_centre = false"))
    assert "matrix.quantizers[2].zero_centre" in msg and "zero_center" in msg


def test_wrong_type_names_key_path(tmp_path, registry):
    msg = error(tmp_path, registry, BASE.replace("zero_center = false", 'zero_center = "no"'))
    assert "matrix.quantizers[2].zero_center" in msg and "boolean" in msg
    msg = error(tmp_path, registry, BASE.replace("steps = 3", 'steps = "many"'))
    assert "train.steps" in msg and "integer" in msg


@pytest.mark.parametrize(
    "old,new,key",
    [
        ("lambdas = [0.001, 0.01]", "lambdas = [0.001, -0.01]", "matrix.lambdas[1]"),
        ("lambdas = [0.001, 0.01]", "lambdas = []", "matrix.lambdas"),
        ('datasets = ["embedded"]', "datasets = []", "matrix.datasets"),
        (
            'quantizers = ["noise", "ste",',
            'quantizers = ["noise", "noise",',
            "matrix.quantizers[1]",
        ),
        ("seeds = [0, 1]", "seeds = [0, 1]\ncolor = 1", "matrix.color"),
        ("[train]", "[train]\nstep = 3", "train.step"),
        ('datasets = ["embedded"]', 'datasets = ["kodac"]', "matrix.datasets[0]"),
    ],
)
def test_bad_values(tmp_path, registry, old, new, key):
    assert old in BASE
    msg = error(tmp_path, registry, BASE.replace(old, new))
    assert key in msg


def test_anchor_must_be_a_label(tmp_path, registry):
    msg = error(tmp_path, registry, BASE + '[report]\nanchor = "sua-plane"\n')
    assert "report.anchor" in msg and "sua-plain" in msg


def test_report_rate_is_bitstream_or_likelihood(tmp_path, registry):
    assert load_matrix(write(tmp_path, BASE), registry).report["rate"] == "bitstream"
    text = BASE + '[report]\nrate = "likelihood"\n'
    assert load_matrix(write(tmp_path, text), registry).report["rate"] == "likelihood"
    msg = error(tmp_path, registry, BASE + '[report]\nrate = "bitsream"\n')
    assert "report.rate" in msg and "'bitsream'" in msg and "did you mean 'bitstream'" in msg
    msg = error(tmp_path, registry, BASE + "[report]\nrate = 1\n")
    assert "report.rate" in msg and "expected string" in msg


def test_missing_file(tmp_path, registry):
    with pytest.raises(MatrixError, match="nope.toml"):
        load_matrix(tmp_path / "nope.toml", registry)


def test_embedded_quick_matrix_is_valid(registry):
    m = load_matrix(None, registry)
    assert m.name == "quick"
    assert {j.quantizer.label for j in m.jobs} >= {"noise", "ste", "sua"}
    assert len({j.lmbda for j in m.jobs}) >= 3


def test_set_overrides_are_validated_recorded_and_part_of_the_identity(tmp_path, registry):
    p = write(tmp_path, BASE)
    plain = load_matrix(p, registry)
    m = load_matrix(p, registry, ["train.steps=7", "eval.max_images=2", "matrix.seeds=[3]"])
    assert {j.train.steps for j in m.jobs} == {7} and {j.seed for j in m.jobs} == {3}
    assert {j.eval.max_images for j in m.jobs} == {2}
    assert not {j.job_id for j in m.jobs} & {j.job_id for j in plain.jobs}
    assert m.resolved()["overrides"] == ["train.steps=7", "eval.max_images=2", "matrix.seeds=[3]"]
    # the same override spelled in the file gives the same jobs
    in_file = load_matrix(
        write(tmp_path, BASE.replace("steps = 3", "steps = 7"), "f.toml"), registry
    )
    assert [j.job_id for j in in_file.jobs][:2] == [
        j.job_id for j in load_matrix(p, registry, ["train.steps=7"]).jobs
    ][:2]
    for bad, key in (
        ("train.stpes=3", "train.stpes"),
        ("train.steps=abc", "train.steps"),
        ("train.steps=0", "train.steps"),
        ("eval.metrics=[1]", "eval.metrics[0]"),
    ):
        with pytest.raises(MatrixError) as info:
            load_matrix(p, registry, [bad])
        assert key in str(info.value) and "--set" in str(info.value) and str(p) in str(info.value)
    with pytest.raises(MatrixError, match="KEY=VALUE"):
        load_matrix(p, registry, ["train.steps"])


def test_log_every_is_a_probe_setting_not_identity(tmp_path, registry):
    a = load_matrix(write(tmp_path, BASE), registry)
    b = load_matrix(write(tmp_path, BASE, "b.toml"), registry, ["train.log_every=5"])
    assert [j.job_id for j in a.jobs] == [j.job_id for j in b.jobs]


def test_unlisted_latents_come_from_the_matrix(tmp_path, registry):
    from qbench.run.worker import build_model

    text = BASE.replace(
        'quantizers = ["noise", "ste", { name = "sua", label = "sua-plain", zero_center = false }]',
        'quantizers = [{ name = "ste", latents = ["y"] }]\nunlisted_latents = "mixed"',
    ).replace('name = "bmshj2018-factorized"', 'name = "mbt2018-mean"')
    m = load_matrix(write(tmp_path, text), registry)
    model = build_model(m.jobs[0], registry)
    assert type(model.quantizers["y"]).__name__ == "STE"
    assert type(model.quantizers["z"]).__name__ == "Mixed"
    default = load_matrix(
        write(tmp_path, text.replace('unlisted_latents = "mixed"', ""), "d.toml"), registry
    )
    assert type(build_model(default.jobs[0], registry).quantizers["z"]).__name__ == "Noise"
    assert m.jobs[0].train_id != default.jobs[0].train_id
    msg = error(tmp_path, registry, text.replace('"mixed"', '"mixd"'))
    assert "matrix.unlisted_latents" in msg and "'mixed'" in msg


def test_two_labels_of_one_configuration_are_two_rows_of_one_training(tmp_path, registry):
    text = BASE.replace('"ste",', '"ste", { name = "ste", label = "ste-again" },')
    m = load_matrix(write(tmp_path, text), registry)
    ste = [j for j in m.jobs if j.quantizer.label == "ste"]
    again = [j for j in m.jobs if j.quantizer.label == "ste-again"]
    assert [j.train_id for j in ste] == [j.train_id for j in again]
    assert not {j.job_id for j in ste} & {j.job_id for j in again}


def test_set_cannot_address_list_elements_and_says_what_to_do(tmp_path, registry):
    """``--set matrix.backbones[0].N=8`` names the key path syntax and the ways that work,
    not an "unknown key" of the [matrix] table; the whole-list form it suggests runs."""
    p = write(tmp_path, BASE)
    for bad, where in (
        ("matrix.backbones[0].N=8", "matrix.backbones[0]"),
        ("matrix.backbones.N=8", "matrix.backbones"),
        ("matrix.lambdas[1]=0.5", "matrix.lambdas[1]"),
    ):
        with pytest.raises(MatrixError) as info:
            load_matrix(p, registry, [bad])
        msg = str(info.value)
        assert str(p) in msg and bad in msg and where in msg, msg
        assert "unknown key" not in msg and "did you mean" not in msg, msg
        assert "dotted path of table keys" in msg and "list element" in msg, msg
        assert "edit the matrix file" in msg, msg
    with pytest.raises(MatrixError) as info:
        load_matrix(p, registry, ["matrix.backbones[0].N=8"])
    msg = str(info.value)
    # the suggestion sets the whole list, the element changed as asked; it is valid as given
    suggested = 'matrix.backbones=[{ name = "bmshj2018-factorized", N = 8, M = 16 }]'
    assert suggested in msg, msg
    m = load_matrix(p, registry, [suggested])
    assert {j.backbone.params["N"] for j in m.jobs} == {8}
