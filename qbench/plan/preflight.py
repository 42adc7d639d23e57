"""Everything that can be known wrong about a matrix before its first job runs.

:func:`preflight` builds every backbone, quantizer, metric and dataset of a
matrix once (so a bad parameter, a missing or unreadable checkpoint, a
quantizer naming a latent its backbone does not have, a quantizer option set
where it has nothing to act on (``Backbone.idle_options``), a missing dataset
folder or a crop larger than every training image is one clear error naming
the matrix file and the entry), and returns the warnings a user should see
once (images a dataset skipped, and what the report will not be able to
compute: :func:`report_warnings`). Nothing is written.
"""

from __future__ import annotations

from qbench.images import DatasetError, image_size
from qbench.registry import QbenchError, Registry, reason


class PreflightError(QbenchError):
    """A matrix that would fail a job; the message names the file and the entry."""


def preflight(matrix, registry: Registry) -> list[str]:
    """Build each distinct entry of ``matrix`` once; raise :class:`PreflightError` on the first
    that cannot be built or used, return warnings (skipped images) to show once."""
    source = matrix.source
    jobs = matrix.jobs

    def build(kind: str, where: str, spec):
        try:
            return registry.build(kind, spec.name, **spec.params)
        except Exception as exc:
            hint = _data_hint(where, spec.name, source) if isinstance(exc, DatasetError) else ""
            raise PreflightError(
                f"{source}: {where} ({spec.label!r}): {reason(exc)}{hint}"
            ) from exc

    backbones = {
        spec.label: build("backbone", "matrix.backbones", spec)
        for spec in {j.backbone.label: j.backbone for j in jobs}.values()
    }
    quantizers = {j.quantizer.label: j.quantizer for j in jobs}
    for spec in quantizers.values():
        quantizer = build("quantizer", "matrix.quantizers", spec)
        for bb, model in backbones.items():
            try:
                targets = model.select_latents(spec.latents)
            except QbenchError as exc:
                raise PreflightError(
                    f"{source}: matrix.quantizers ({spec.label!r}).latents, backbone {bb!r}: {exc}"
                ) from exc
            check_served(source, spec, bb, model, quantizer, targets)
    check_models(matrix, backbones, registry)
    build("quantizer", "matrix.unlisted_latents", matrix.jobs[0].unlisted)
    for name in matrix.eval.metrics:
        try:
            registry.build("metric", name)
        except Exception as exc:
            raise PreflightError(f"{source}: eval.metrics ({name!r}): {reason(exc)}") from exc

    for spec in matrix.loggers:  # a logger whose library is missing names its extra now
        build("logger", "monitor.loggers", spec)

    warnings = []
    train = build("dataset", "train.dataset", matrix.train_dataset)
    crop = matrix.train.crop
    sizes = [image_size(train, i) for i in range(len(train))]  # headers: nothing decoded
    if sizes and all(h < crop or w < crop for h, w in sizes):
        largest = max(sizes, key=lambda s: s[0] * s[1])
        raise PreflightError(
            f"{source}: train.crop: {crop} px is larger than every training image (the largest "
            f"is {largest[1]}x{largest[0]}); use a smaller crop"
        )
    datasets = [("train.dataset", matrix.train_dataset, train)]
    for spec in {j.dataset.label: j.dataset for j in jobs}.values():
        datasets.append(("matrix.datasets", spec, build("dataset", "matrix.datasets", spec)))
    for where, spec, ds in datasets:
        for _, why in getattr(ds, "skipped", []):
            warnings.append(f"{where} ({spec.label!r}): skipped {why}")
    for _, spec, ds in datasets[1:]:
        check_max_pixels(source, matrix.eval, spec.label, ds)
    return warnings + report_warnings(matrix)


def check_served(source, spec, bb: str, model, quantizer, targets) -> None:
    """:class:`PreflightError` when backbone ``model`` (``bb``) cannot serve the entry
    ``spec``'s ``quantizer`` on its ``targets`` latents: a need it does not offer
    (``Quantizer.needs``), or an option set explicitly with nothing to act on there."""
    missing = model.missing_needs(quantizer, targets)
    if missing:
        latent, why = next(iter(missing.items()))
        raise PreflightError(
            f"{source}: matrix.quantizers ({spec.label!r}): backbone {bb!r} cannot "
            f"serve it on latent {latent!r}: {why}, which that latent does not offer; "
            "choose other options or a backbone whose latents offer it"
        )
    idle = model.idle_options(quantizer, targets)
    for option in spec.params:
        if option in idle:
            raise PreflightError(
                f"{source}: matrix.quantizers ({spec.label!r}).{option}: "
                f"{option} = {spec.params[option]!r} has nothing to act on in backbone "
                f"{bb!r}: {idle[option]}; remove it or choose a backbone where it acts"
            )


def check_models(matrix, backbones: dict, registry: Registry) -> None:
    """:class:`PreflightError` when a built backbone cannot do what the matrix asks of it:
    offer its latents for ``[eval] refine_latents``, or give a recipe what it needs
    (``Recipe.check``, on the backbone with the job's quantizers: soft-then-hard's frozen
    modules, the quantizer state a derived model resets)."""
    source = matrix.source
    if matrix.eval.refine_latents is not None:
        for bb, model in backbones.items():
            if not model.offers_refinement():
                raise PreflightError(
                    f"{source}: eval.refine_latents: backbone {bb!r} does not offer its latents "
                    "for refinement (Backbone.encode / forward_latents / compress_latents)"
                )
    jobs = {(j.backbone.label, j.quantizer.label): j for j in matrix.jobs}
    for (bb, label), job in jobs.items():
        model = backbones[bb]
        try:
            targets = model.select_latents(job.quantizer.latents)
            model.set_quantizers(
                {
                    latent: registry.build("quantizer", spec.name, **spec.params)
                    for latent in model.latents
                    for spec in [job.quantizer if latent in targets else job.unlisted]
                }
            )
            job.recipe.check(model)
        except QbenchError as exc:
            raise PreflightError(
                f"{source}: matrix.quantizers ({label!r}), backbone {bb!r}: {exc}"
            ) from exc


def check_max_pixels(source, config, label: str, ds) -> None:
    """:class:`PreflightError` when ``[eval] max_pixels`` leaves out every image of the
    evaluation dataset ``ds`` (``label``) that ``max_images`` selects, said with the
    smallest of them (sizes from the headers: nothing is decoded)."""
    n = min(config.max_images or len(ds), len(ds))
    sizes = [image_size(ds, i) for i in range(n)]
    if sizes and all(h * w > config.max_pixels for h, w in sizes):
        h, w = min(sizes, key=lambda s: s[0] * s[1])
        raise PreflightError(
            f"{source}: eval.max_pixels: {config.max_pixels} ({config.max_pixels / 1e6:.1f} MP) "
            f"is below every image of dataset {label!r} evaluated (the smallest is {w}x{h}, "
            f"{h * w / 1e6:.1f} MP), so none would be evaluated; raise it to at least {h * w}"
        )


def _data_hint(where: str, name: str, source: str) -> str:
    """How to point a matrix at images it cannot find, without editing it."""
    if where == "train.dataset":
        how = "--set train.dataset.path=/path/to/images"
    else:
        entry = f'{{ name = "{name}", path = "/path/to/images" }}'
        how = f"--set 'matrix.datasets=[{entry}]' (the whole list)"
    return (
        f"; the images are not here: give their folder with {how} (or edit {source}; "
        "a matrix's header comments say which data it needs and where to get it)"
    )


def report_warnings(matrix) -> list[str]:
    """What the report of ``matrix`` cannot give, said before anything runs: curves with
    fewer points than a BD-rate needs, and published reference curves not downloaded."""
    from qbench import reference
    from qbench.bdrate import MIN_POINTS

    source, out = matrix.source, []
    curves: dict[tuple, int] = {}  # (backbone, quantizer, dataset, seed): points
    for j in matrix.jobs:
        key = (j.backbone.label, j.quantizer.label, j.dataset.label, j.seed)
        curves[key] = curves.get(key, 0) + 1
    short: dict[int, list[str]] = {}
    for (bb, q, _, _), n in curves.items():
        if n < MIN_POINTS and f"{q} on {bb}" not in short.get(n, []):
            short.setdefault(n, []).append(f"{q} on {bb}")
    for n, names in sorted(short.items()):
        out.append(
            f"{source}: matrix.lambdas: {n} point(s) per curve ({', '.join(names)}): a BD-rate "
            f"needs at least {MIN_POINTS}, so the report will have none for them; give "
            f"{MIN_POINTS} or more lambdas"
        )
    names = matrix.report.get("reference_curves", [])
    if names:
        _, curves = reference.catalogue()
        where = reference.folder()
        absent = [n for n in names if n in curves and not (where / curves[n].file).is_file()]
        if absent:
            out.append(
                f"{source}: report.reference_curves: {', '.join(absent)} not downloaded "
                f"(looked in {where}); the report will draw without them. Fetch them with "
                f"`qbench reference-curves --download {' '.join(absent)}`; "
                + reference.offline_route(absent)
            )
    return out
