"""Run the numbered notebooks through papermill, each after those whose results it reads, with a named preset
plus overrides.

    python -m cortex_run.pipeline --preset default
    python -m cortex_run.pipeline --preset smoke -p seed 1 -p 01_vq_model.train_steps 20
    python -m cortex_run.pipeline --preset default --config my_overrides.yaml --only 02_dataset_generation
    python -m cortex_run.pipeline --preset default --jobs 1     # strictly one notebook after another

A preset (``cortex_run/presets/<name>.yaml``) lists the notebooks and their parameters. ``-p NAME VALUE``
sets NAME in every notebook that declares it (``-p NOTEBOOK.NAME VALUE`` in one); values are YAML
(``true``, ``3``, ``[1, 5]``). A name no notebook declares is an error. Executed notebooks, artifacts and
``metrics.json`` go to one run directory.

A preset may first finish other runs (``runs``: a list of ``{run_dir, preset, parameters}``, each a whole run
of another preset into its own directory, one after another, with that entry's parameters and the ``-p``
overrides), then run its own notebooks, which read those runs (``--preset codebook-sizes``; ``--config`` sets
their parameters). ``--only`` runs only the preset's own notebooks (``-p`` then sets theirs) on the runs as
they are.

``NEEDS`` (or a preset's ``needs``) says which notebooks read which others' results; with ``--jobs 2`` (the
default on two or more cores) a notebook starts as soon as those are done, beside another one, each kernel
with half the cores. Sampling draws the same tokens whatever the thread count; a model trained with fewer
threads can differ in the last digits (float sums in another order).
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
from .notebook import declared_parameters

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PRESET_DIR = Path(__file__).parent / "presets"
RUNNER_PARAMETERS = {"run_dir"}  # set by the runner itself
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
    "18_data_and_iem_deeper": ["04_test_iem"],
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
    return preset


def parameter_defaults(notebook: str) -> dict:
    """``{name: default source text}`` of a notebook's ``parameters`` cell (``notebook.declared_parameters``),
    or SystemExit naming a notebook that does not exist."""
    path = NOTEBOOK_DIR / f"{notebook}.ipynb"
    if not path.exists():
        raise SystemExit(f"error: notebook {path} does not exist")
    return {k: v["default"] for k, v in declared_parameters(notebook).items()}


def sub_runs(preset: dict, overrides=()) -> list[dict]:
    """The runs a preset finishes before its own notebooks, checked (each ``run_dir``, ``preset`` and the
    parameters its notebooks get, as ``resolve_parameters`` gives them) before any of them starts."""
    plan = []
    for i, entry in enumerate(preset.get("runs") or []):
        unknown = set(entry) - {"run_dir", "preset", "parameters"}
        if unknown or not {"run_dir", "preset"} <= set(entry):
            raise SystemExit(
                f"error: preset runs[{i}] needs run_dir and preset (and optional parameters), "
                f"got {sorted(entry)}"
            )
        sub = load_preset(entry["preset"])
        if sub.get("runs"):
            raise SystemExit(f"error: preset runs[{i}]: preset {entry['preset']!r} has runs of its own")
        plan.append(
            {
                "run_dir": REPO_ROOT / entry["run_dir"],
                "preset": entry["preset"],
                "parameters": entry.get("parameters") or {},
                "resolved": resolve_parameters(sub, list(overrides), entry.get("parameters")),
            }
        )
    return plan


def resolve_parameters(preset: dict, overrides: list[tuple[str, str]], extra: dict | None = None) -> dict:
    """Per-notebook parameters: preset, then the YAML file's values, then ``-p`` overrides.

    Raises SystemExit naming any parameter that the notebooks it is meant for do not declare.
    """
    notebooks = preset["notebooks"]
    declared = {nb: parameter_defaults(nb) for nb in notebooks}
    params = {nb: dict(preset["parameters"].get(nb) or {}) for nb in notebooks}
    unknown_nb = set(preset["parameters"]) - set(notebooks)
    if unknown_nb:
        raise SystemExit(f"error: preset sets parameters for notebooks it does not run: {sorted(unknown_nb)}")

    def apply(name: str, value, origin: str):
        nb, _, key = name.rpartition(".")
        targets = [nb] if nb else [n for n in notebooks if key in declared[n]]
        if nb and nb not in declared:
            raise SystemExit(f"error: {origin}: no notebook {nb!r} in this run ({', '.join(notebooks)})")
        if not targets or (nb and key not in declared[nb]):
            where = nb or "any notebook of this run"
            raise SystemExit(
                f"error: {origin}: unknown parameter {key!r} for {where}. "
                "Known: "
                f"{', '.join(sorted(set().union(*[declared[t] for t in ([nb] if nb else notebooks)])))}"
            )
        for t in targets:
            params[t][key] = value

    for nb in notebooks:
        for key in params[nb]:
            if key not in declared[nb]:
                raise SystemExit(f"error: preset: unknown parameter {key!r} for {nb}")
    for name, value in (extra or {}).items():
        if isinstance(value, dict) and name in declared:
            for k, v in value.items():
                apply(f"{name}.{k}", v, "config file")
        else:
            apply(name, value, "config file")
    for name, raw in overrides:
        apply(name, yaml.safe_load(raw), f"-p {name}")
    return params


def dependencies(preset: dict) -> dict[str, list[str]]:
    """Which notebooks each notebook waits for: ``NEEDS`` (those of them the preset runs; the others'
    results are read from the run directory as they are), or a preset's own ``needs``
    (``{notebook: [notebooks]}``); a notebook in neither waits for the one before it."""
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
    waiting_on = {nb: {m for m, deps in needs.items() if nb in deps} for nb in needs}
    out = {}
    for nb in needs:
        seen, todo = set(), list(waiting_on[nb])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(waiting_on[m])
        out[nb] = len(seen)
    return out


def _execute(nb: str, out: str, parameters: dict, threads: int | None, cell_timeout: float | None) -> dict:
    """Run one notebook through papermill (in a worker process); report its time or where it failed."""
    # deferred: five seconds to import, and only the worker that runs a notebook needs it
    import papermill as pm

    if threads:  # the kernel inherits it; torch sizes its thread pool from it
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    # The kernel's own log (its start-up warning about TCP transport, the "KeyboardInterrupt caught" of its
    # shutdown) goes to <run>/logs/<notebook>.log, not to the terminal: a clean run prints only its progress.
    # This worker process runs this one notebook (max_tasks_per_child=1), so its stderr is free to move.
    log = Path(out).parent / "logs" / f"{nb}.log"
    log.parent.mkdir(exist_ok=True)
    with open(log, "w") as f:
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
        return {
            "error": f"notebook {nb} failed in cell {err.cell_index} (execution count {err.exec_count}): "
            f"{err.ename}: {err.evalue}"
        }
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
    """Execute the preset's notebooks into one run directory. ``jobs`` None takes the preset's ``jobs`` (else
    1). With ``jobs`` > 1, notebooks whose inputs are ready (see ``dependencies``) run side by side, each
    kernel with ``cores // jobs`` threads (all cores for a notebook that runs alone). A preset's ``runs``
    are finished first (not with ``only``); ``parameters`` (``{name: value}``, as a ``--config`` file's)
    come before the config file and the overrides."""
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
        # the others' results are read from --run-dir as they are
        needs = {nb: [n for n in needs[nb] if n in only] for nb in preset["notebooks"]}
    extra = {**(parameters or {}), **(yaml.safe_load(Path(config).read_text()) if config else {})}
    # with runs to finish first, the -p overrides are theirs (with --only, the preset's own notebooks')
    params = resolve_parameters(preset, [] if preset.get("runs") and not only else list(overrides), extra)
    for sub in [] if only else sub_runs(preset, overrides):
        print(f"=== run {sub['run_dir']} (preset {sub['preset']}) ===", flush=True)
        run(sub["preset"], overrides, None, str(sub["run_dir"]), None, jobs, cell_timeout, sub["parameters"])
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(run_dir or REPO_ROOT / "runs" / f"{stamp}-{Path(preset_name).stem}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "parameters.yaml").write_text(yaml.safe_dump({"preset": preset_name, "parameters": params}))
    print(f"run directory: {run_dir}")
    if not only:  # a whole run starts counting the models it trains afresh (artifacts.note_trained)
        record_metrics(run_dir, models_trained_in_run=0)
    # kernels inherit the environment: a headless MPLBACKEND=Agg would keep figures out of the notebooks;
    # no one watches a widget progress bar in a batch run, and papermill saves it at "0%" (see progress.py)
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    os.environ["CORTEX_PLAIN_PROGRESS"] = "1"
    cores = os.cpu_count() or 1
    t_all = time.perf_counter()
    waiting, running, done, errors = list(preset["notebooks"]), {}, set(), []
    chain = downstream(needs)
    # a fresh process per notebook (spawned, not forked: a kernel client shares nothing with another)
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=get_context("spawn"), max_tasks_per_child=1
    ) as pool:
        while waiting or running:
            while not errors and len(running) < jobs:
                ready = [nb for nb in waiting if set(needs[nb]) <= done]
                if not ready:
                    break
                nb = max(
                    ready, key=lambda n: (chain[n], -waiting.index(n))
                )  # longest wait first, then in order
                waiting.remove(nb)
                # alone (nothing else ready or running, so nothing can start beside it): every core
                threads = (
                    None if jobs == 1 else cores if not running and len(ready) == 1 else max(1, cores // jobs)
                )
                print(f"[{nb}] running ...", flush=True)
                running[
                    pool.submit(
                        _execute,
                        nb,
                        str(run_dir / f"{nb}.ipynb"),
                        {**params[nb], "run_dir": str(run_dir)},
                        threads,
                        cell_timeout,
                    )
                ] = nb
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                nb = running.pop(future)
                try:
                    result = future.result()
                except Exception as err:  # the worker process itself failed (not the notebook)
                    result = {
                        "error": f"notebook {nb}: its worker process failed: {type(err).__name__}: {err}"
                    }
                out = run_dir / f"{nb}.ipynb"
                if "error" in result:
                    failed = out.with_suffix(".failed.ipynb")
                    if out.exists():
                        out.replace(failed)
                    errors.append(
                        f"{result['error']}\n  executed copy: {failed}"
                        f"\n  kernel log: {run_dir / 'logs' / f'{nb}.log'}"
                    )
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
    ap.add_argument(
        "--config", help="YAML file of parameter overrides ({name: value} or {notebook: {name: value}})"
    )
    ap.add_argument("--run-dir", help="where to write the run (default: runs/<time>-<preset>)")
    ap.add_argument(
        "--only", help="comma-separated notebook names to run (they read earlier results from --run-dir)"
    )
    ap.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=None,
        help="notebooks to run side by side when their inputs are ready (default: the preset's 'jobs', "
        "else 2 on a machine with 2 or more cores; 1 runs them one after another)",
    )
    ap.add_argument(
        "--cell-timeout",
        type=float,
        default=3600,
        help="seconds one cell may run before its notebook fails (default 3600; 0: no limit)",
    )
    a = ap.parse_args(argv)
    if a.jobs is None and "jobs" not in load_preset(a.preset):
        a.jobs = min(2, os.cpu_count() or 1)
    run(
        a.preset,
        [tuple(p) for p in a.parameter],
        a.config,
        a.run_dir,
        a.only.split(",") if a.only else None,
        a.jobs,
        a.cell_timeout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
