"""Run the numbered notebooks through papermill, each after those whose results it reads (``NEEDS``), with a
named preset (``cortex_run/presets/<name>.yaml``) plus overrides, into one run directory.

    python -m cortex_run.pipeline --preset default
    python -m cortex_run.pipeline --preset smoke -p seed 1 -p 01_vq_model.train_steps 20
    python -m cortex_run.pipeline --preset default --config my_overrides.yaml --only 02_dataset_generation

``-p NAME VALUE`` sets NAME in every notebook that declares it (``-p NOTEBOOK.NAME VALUE`` in one; VALUE is
YAML: ``true``, ``3``, ``[1, 5]``); a name no notebook declares is an error. A preset's ``runs`` (whole runs
of other presets, with the ``-p`` overrides) finish before its own notebooks; ``--only`` runs just its own.
A preset's ``requires`` names parameters the user must give (``-p image_folder PATH``): without them the run
stops before it starts; its ``skipped`` ({notebook: why}) is printed at the start of the run's log.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path

import yaml

from . import REPO_ROOT
from .artifacts import record_metrics
from .notebook import parameter_defaults

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PRESET_DIR = Path(__file__).parent / "presets"
# which notebooks each numbered notebook reads results of (from the run directory)
NEEDS = {
    "01_vq_model": [],
    "02_dataset_generation": ["01_vq_model"],
    "03_train_iem": ["02_dataset_generation"],
    "04_test_iem": ["03_train_iem"],
    "05_compute_tis": ["03_train_iem"],
    "06_concept_analysis": ["05_compute_tis"],
    "07_image_level_explanation": ["05_compute_tis"],
    "08_concept_level_explanation": ["06_concept_analysis"],
    "09_codebook_optimization": ["03_train_iem", "06_concept_analysis"],
    "10_bias_detection": ["02_dataset_generation", "05_compute_tis"],
    "11_trust_the_explanations": ["06_concept_analysis"],
    "12_compare_tokenizers": ["07_image_level_explanation", "09_codebook_optimization"],
    "13_bias_real_data": [],
    "14_several_objects": ["06_concept_analysis"],
    "15_tis_deeper": ["05_compute_tis"],
    "16_bias_deeper": ["10_bias_detection"],
    "17_masking_deeper": ["07_image_level_explanation", "08_concept_level_explanation"],
    "18_real_shape": [],
}


def load_preset(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise SystemExit(f"error: unknown preset {name_or_path!r} (known: {', '.join(known)})")
    preset = yaml.safe_load(path.read_text()) or {}
    preset.setdefault("parameters", {})
    skipped = preset.get("skipped") or {}
    wrong = sorted(set(skipped) - (set(NEEDS) - set(preset.get("notebooks") or [])))
    if wrong or not all(isinstance(why, str) and why for why in skipped.values()):
        raise SystemExit(
            f"error: preset {name_or_path!r}: 'skipped' maps notebooks it does not run to a reason each"
            + (f"; not such a notebook: {wrong}" if wrong else "")
        )
    return preset


def check_required(preset: dict, params: dict, name: str = "") -> None:
    """SystemExit, before anything runs, when a parameter the preset ``requires`` is not given (or empty) in
    the notebooks of this run that declare it."""
    for key in preset.get("requires") or []:
        declared = [nb for nb in params if key in parameter_defaults(nb)]
        if declared and not any(params[nb].get(key) not in (None, "", [], {}) for nb in declared):
            raise SystemExit(
                f"error: preset {name!r} requires -p {key} (a parameter of {', '.join(declared)}), e.g. "
                f"python -m cortex_run.pipeline --preset {name} -p {key} PATH"
            )


def sub_runs(preset: dict, overrides=()) -> list[dict]:
    """The preset's ``runs``, checked before any starts, each with its notebooks' ``resolved`` parameters."""
    plan = []
    for i, entry in enumerate(preset.get("runs") or []):
        if set(entry) - {"run_dir", "preset", "parameters"} or not {"run_dir", "preset"} <= set(entry):
            raise SystemExit(
                f"error: preset runs[{i}] needs run_dir and preset (and parameters), got {sorted(entry)}"
            )
        sub = load_preset(entry["preset"])
        if sub.get("runs"):
            raise SystemExit(f"error: preset runs[{i}]: preset {entry['preset']!r} has runs of its own")
        parameters = entry.get("parameters") or {}
        step = {"run_dir": REPO_ROOT / entry["run_dir"], "preset": entry["preset"], "parameters": parameters}
        plan.append(step | {"resolved": resolve_parameters(sub, list(overrides), parameters)})
    return plan


def resolve_parameters(preset: dict, overrides: list[tuple[str, str]], extra: dict | None = None) -> dict:
    """Per-notebook parameters: the preset's, then ``extra`` (a config file's), then the ``-p`` overrides;
    SystemExit names a parameter that the notebooks it is meant for do not declare."""
    notebooks = preset["notebooks"]
    missing = [nb for nb in notebooks if not (NOTEBOOK_DIR / f"{nb}.ipynb").exists()]
    if missing:
        raise SystemExit(f"error: no notebook {missing[0]} in {NOTEBOOK_DIR}")
    unknown_nb = set(preset["parameters"]) - set(notebooks)
    if unknown_nb:
        raise SystemExit(f"error: preset sets parameters for notebooks it does not run: {sorted(unknown_nb)}")
    declared = {nb: parameter_defaults(nb) for nb in notebooks}
    params = {nb: {} for nb in notebooks}

    def apply(name: str, value, origin: str):
        nb, _, key = name.rpartition(".")
        if nb and nb not in declared:
            raise SystemExit(f"error: {origin}: no notebook {nb!r} in this run ({', '.join(notebooks)})")
        targets = [nb] if nb else [n for n in notebooks if key in declared[n]]
        if not targets or key not in declared[targets[0]]:
            known = ", ".join(sorted(set().union(*[declared[t] for t in ([nb] if nb else notebooks)])))
            where = nb or "any notebook of this run"
            raise SystemExit(f"error: {origin}: unknown parameter {key!r} for {where}. Known: {known}")
        for t in targets:
            params[t][key] = value

    for origin, values in (("preset", preset["parameters"]), ("config file", extra or {})):
        for name, value in values.items():
            if name in declared and (value is None or isinstance(value, dict)):  # {notebook: {name: value}}
                for key, v in (value or {}).items():
                    apply(f"{name}.{key}", v, origin)
            else:
                apply(name, value, origin)
    for name, raw in overrides:
        apply(name, yaml.safe_load(raw), f"-p {name}")
    return params


def dependencies(preset: dict) -> dict[str, list[str]]:
    """Which notebooks each notebook waits for: a preset's own ``needs``, else ``NEEDS`` (the notebooks the
    preset runs; the others' results are read as they are); a notebook in neither waits for the one before."""
    notebooks = preset["notebooks"]
    needs = preset.get("needs")
    if needs:
        unknown = sorted({n for k, v in needs.items() for n in [k, *v]} - set(notebooks))
        if unknown:
            raise SystemExit(f"error: preset 'needs' names notebooks it does not run: {unknown}")
    else:
        needs = {nb: [n for n in NEEDS[nb] if n in notebooks] for nb in notebooks if nb in NEEDS}
    return {nb: list(needs[nb]) if nb in needs else notebooks[i - 1 : i] for i, nb in enumerate(notebooks)}


def downstream(needs: dict[str, list[str]]) -> dict[str, int]:
    """How many notebooks wait, directly or through others, for each one: the runner starts the ready
    notebook with the most first, so a long chain (10 -> 16) does not start last."""
    behind = {nb: {m for m, deps in needs.items() if nb in deps} for nb in needs}
    for _ in needs:  # add the notebooks behind those behind, until every chain is followed to its end
        behind = {nb: ms.union(*[behind[m] for m in ms]) for nb, ms in behind.items()}
    return {nb: len(ms) for nb, ms in behind.items()}


def _execute(nb: str, out: str, parameters: dict, threads: int | None, cell_timeout: float | None) -> dict:
    """Run one notebook through papermill (in a worker process); report its time or where it failed."""
    # deferred: seconds to import, and only the worker that runs a notebook needs it
    import papermill as pm

    if threads:  # the kernel inherits it; torch sizes its thread pool from it
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    # the kernel's own log (start-up warnings, its shutdown's KeyboardInterrupt) to <run>/logs/<notebook>.log,
    # not the terminal; this worker runs only this notebook (max_tasks_per_child=1), so its stderr may move
    with open(Path(out).parent / "logs" / f"{nb}.log", "w") as f:
        os.dup2(f.fileno(), 2)
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            str(NOTEBOOK_DIR / f"{nb}.ipynb"),
            out,
            parameters=parameters,
            cwd=str(NOTEBOOK_DIR),
            kernel_name="python3",
            progress_bar=False,
            log_output=False,
            execution_timeout=cell_timeout or None,
        )
    except pm.PapermillExecutionError as err:
        where = f"cell {err.cell_index} (execution count {err.exec_count})"
        return {"error": f"notebook {nb} failed in {where}: {err.ename}: {err.evalue}"}
    except Exception as err:  # a cell timed out, the kernel died or did not start, ...
        return {"error": f"notebook {nb} did not finish: {type(err).__name__}: {err}"}
    return {"seconds": time.perf_counter() - t0}


def run(
    preset_name: str = "default",
    overrides=(),
    config: str | None = None,
    run_dir: str | None = None,
    only: list[str] | None = None,
    jobs: int | None = 1,
    cell_timeout: float = 3600,
    parameters: dict | None = None,
) -> Path:
    """Execute the preset's notebooks into one run directory, after its ``runs`` (not with ``only``); ``jobs``
    None: the preset's (else 1). ``parameters`` (as in a ``config`` file) come before it and the overrides."""
    preset = load_preset(preset_name)
    jobs = preset.get("jobs", 1) if jobs is None else jobs
    if jobs < 1:
        raise SystemExit(f"error: --jobs must be >= 1, got {jobs}")
    needs = dependencies(preset)
    if only:
        missing = [n for n in only if n not in preset["notebooks"]]
        if missing:
            raise SystemExit(f"error: --only names notebooks not in the preset: {missing}")
        preset["notebooks"] = [n for n in preset["notebooks"] if n in only]
        preset["parameters"] = {k: v for k, v in preset["parameters"].items() if k in only}
        needs = {nb: [n for n in needs[nb] if n in only] for nb in preset["notebooks"]}
    extra = {**(parameters or {}), **(yaml.safe_load(Path(config).read_text()) if config else {})}
    # with runs to finish first, the -p overrides are theirs (with --only, the preset's own notebooks')
    params = resolve_parameters(preset, [] if preset.get("runs") and not only else list(overrides), extra)
    check_required(preset, params, Path(preset_name).stem)
    for sub in [] if only else sub_runs(preset, overrides):
        print(f"=== run {sub['run_dir']} (preset {sub['preset']}) ===", flush=True)
        run(sub["preset"], overrides, None, str(sub["run_dir"]), None, jobs, cell_timeout, sub["parameters"])
    run_dir = Path(run_dir or REPO_ROOT / "runs" / f"{datetime.now():%Y%m%d-%H%M%S}-{Path(preset_name).stem}")
    run_dir = run_dir.resolve()
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)  # the kernels' logs (_execute)
    (run_dir / "parameters.yaml").write_text(yaml.safe_dump({"preset": preset_name, "parameters": params}))
    print(f"run directory: {run_dir}")
    for nb, why in (preset.get("skipped") or {}).items():
        print(f"[{nb}] skipped by preset {Path(preset_name).stem}: {why}", flush=True)
    if not only:  # a whole run starts counting the models it trains afresh (artifacts.note_trained)
        record_metrics(run_dir, models_trained_in_run=0)
    # the kernels inherit these: inline figures (not Agg), progress as lines (papermill saves a bar at "0%")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    os.environ["CORTEX_PLAIN_PROGRESS"] = "1"
    cores = os.cpu_count() or 1
    t_all = time.perf_counter()
    waiting, running, done, errors = list(preset["notebooks"]), {}, set(), []
    chain = downstream(needs)
    # a fresh process per notebook (spawned, not forked: a kernel client shares nothing with another)
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        while waiting or running:
            ready = [nb for nb in waiting if set(needs[nb]) <= done]
            while ready and not errors and len(running) < jobs:
                nb = max(ready, key=chain.get)  # the most notebooks waiting behind it; of equals the first
                alone = not running and len(ready) == 1  # so nothing can start beside it: every core
                threads = None if jobs == 1 else cores if alone else max(1, cores // jobs)
                ready.remove(nb)
                waiting.remove(nb)
                print(f"[{nb}] running ...", flush=True)
                args = (str(run_dir / f"{nb}.ipynb"), {**params[nb], "run_dir": str(run_dir)}, threads)
                running[pool.submit(_execute, nb, *args, cell_timeout)] = nb
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                nb = running.pop(future)
                out = run_dir / f"{nb}.ipynb"
                try:
                    result = future.result()
                except Exception as err:  # the worker process itself failed (not the notebook)
                    result = {
                        "error": f"notebook {nb}: its worker process failed: {type(err).__name__}: {err}"
                    }
                if "error" in result:
                    failed = out.with_suffix(".failed.ipynb")
                    if out.exists():
                        out.replace(failed)
                    log = run_dir / "logs" / f"{nb}.log"
                    errors.append(f"{result['error']}\n  executed copy: {failed}\n  kernel log: {log}")
                    print(f"[{nb}] FAILED", flush=True)
                    continue
                done.add(nb)
                record_metrics(run_dir, **{f"{nb}_seconds": round(result["seconds"], 2)})
                print(f"[{nb}] done in {result['seconds']:.1f} s -> {out}", flush=True)
    if errors:
        skipped = f"\n  not run (they need its results): {', '.join(waiting)}" if waiting else ""
        raise SystemExit("error: " + "\nerror: ".join(errors) + skipped)
    if waiting:
        raise SystemExit(f"error: preset 'needs' has a cycle: {', '.join(waiting)} never became ready")
    total = time.perf_counter() - t_all
    record_metrics(run_dir, pipeline_seconds=round(total, 2))
    print(f"pipeline finished in {total:.1f} s; results in {run_dir} (metrics.json, executed notebooks)")
    return run_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cortex_run.pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--preset", default="default", help="preset name (default, smoke) or a YAML path")
    ap.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="override a parameter (NAME or NOTEBOOK.NAME; VALUE is YAML)",
    )
    ap.add_argument("--config", help="YAML file of parameters ({name: value} or {notebook: {name: value}})")
    ap.add_argument("--run-dir", help="where to write the run (default: runs/<time>-<preset>)")
    ap.add_argument("--only", help="comma-separated notebooks to run (reading earlier results in --run-dir)")
    ap.add_argument(
        "-j", "--jobs", type=int, help="notebooks at once (default: the preset's 'jobs', else min(2, cores))"
    )
    ap.add_argument(
        "--cell-timeout", type=float, default=3600, help="seconds a cell may run before failing (0: no limit)"
    )
    a = ap.parse_args(argv)
    if a.jobs is None and "jobs" not in load_preset(a.preset):
        a.jobs = min(2, os.cpu_count() or 1)
    only = a.only.split(",") if a.only else None
    run(a.preset, a.parameter, a.config, a.run_dir, only, a.jobs, a.cell_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
