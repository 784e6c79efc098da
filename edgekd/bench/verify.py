"""`edgekd bench --verify RUN`: measure a run's certified teacher and student again on the
target, through `edgekd deploy`'s path, and judge them by the rule their certificate was made
with (edgekd.selection.certificate). What changed since (model files, the target's
environment) is reported beside the verdict.

With a speed-up budget the limit is the teacher's new figure / speed-up, and on a target whose
environment fingerprint is unchanged also at most the selection's limit, exactly as certified.
Where the fingerprint differs (a new driver, JetPack, power mode or device), the selection's
limit belonged to the device as it was: the teacher measured in the same bundle is the
reference, so a faster or slower device moves both sides.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from deploy.bench import sha256_file
from deploy.harness import MeasureSettings
from edgekd.errors import RunDirError
from edgekd.runfiles import REPORT
from edgekd.selection.cache import environment_fingerprint
from edgekd.selection.certificate import SCHEMA, VERSION, differences, judge

RESULTS_DIR = "verify"


def load_certificate(run: Path) -> dict:
    """The certificate in RUN/report.json; a one-line RunDirError naming the fix otherwise."""
    path = run / REPORT
    if not path.is_file():
        raise RunDirError(f"{run} has no {REPORT}: pass the folder of a finished edgekd compress run")
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path} cannot be read ({e}): rerun edgekd compress --resume on {run}") from None
    cert = (report.get("budget") or {}).get("certificate") if isinstance(report, dict) else None
    if not isinstance(cert, dict):
        raise RunDirError(f"{run} has no budget certificate: only a run compressed with --latency-budget "
                          "or --speedup has one (rerun edgekd compress with a budget, or --resume it "
                          "with a newer edgekd)")
    if cert.get("schema") != SCHEMA or cert.get("schema_version") != VERSION:
        raise RunDirError(f"{run}'s certificate is {cert.get('schema')} version {cert.get('schema_version')}, "
                          f"this edgekd reads {SCHEMA} version {VERSION}: verify it with the edgekd "
                          f"{cert.get('edgekd_version')} that made it")
    return {**cert, "settings": (report.get("settings") or {}).get("budget") or {}}


def verify_run(run_dir: str | Path, target: str | None = None,
               progress: Callable[[str, str], None] | None = None, sustain_s: float = 0.0) -> dict:
    """Measure and judge again; returns the verification document (`holds`, `measured`, the
    `certificate`'s figures, `changed_files`, `changed_environment`, `summary`: one line).
    `sustain_s` > 0 also runs each model that long and reports its drift under `sustained`
    (beside the verdict, which the short measurement decides, as it did for the certificate)."""
    from edgekd.ship.remote import DeployOptions, deploy_run

    run = Path(run_dir)
    cert = load_certificate(run)
    budget, settings, files = cert["budget"], cert.pop("settings"), cert["models"]
    changed_files = []
    for role, f in files.items():
        path = run / f["file"]
        if not path.is_file():
            raise RunDirError(f"{run} has no {f['file']}, the certified {role}: restore it or rerun "
                              "edgekd compress --resume")
        now = sha256_file(str(path))
        if now != f["sha256"]:
            changed_files.append(f"{f['file']} changed (sha256 {f['sha256'][:12]} -> {now[:12]})")
    # How the certificate's device was reached (its Python, bundles folder, ssh config) is
    # reused for that device only.
    same = target is None or target == budget["target"]
    reach = {k: settings.get(k) if same else None for k in ("remote_python", "remote_dir", "ssh_config")}
    opts = DeployOptions(target=target or budget["target"], backend=budget["backend"], **reach,
                         threads=budget.get("threads"),
                         batch_sizes=[budget["batch"]],
                         precision="fp16" if budget.get("precision") == "fp16" else "fp32",
                         models=[files["teacher"]["key"], files["student"]["key"]],
                         settings=MeasureSettings(**cert["harness"]["settings"]), sustain_s=sustain_s)
    result = deploy_run(run, opts, progress=progress, results_dir=RESULTS_DIR)
    doc = result["document"]
    env = environment_fingerprint(result["probe"], budget["backend"])
    changed_env = differences(cert["environment"], env)
    verdict = judge(doc, files["student"]["key"], budget["percentile"], budget["latency_ms"], budget["speedup"],
                    None if changed_env else budget.get("selection_limit_ms"))
    return {"schema": "edgekd.budget-verification", "run": str(run), "target": opts.target,
            "holds": verdict["holds"], "measured": verdict, "certified": cert["measured"],
            "budget": budget, "changed_files": changed_files, "changed_environment": changed_env,
            "results": str(Path(result["path"]).relative_to(run)),
            "sustained": {role: doc["models"][f["key"]].get("sustained") for role, f in files.items()}
            if sustain_s else None,
            "summary": summary(verdict, cert["measured"], budget, changed_files, changed_env)}


def summary(now: dict, then: dict, budget: dict, changed_files: list[str], changed_env: list[str]) -> str:
    """One line: the verdict, the student's figure against the limit then and now, what changed."""
    how = f"{budget['percentile']}, batch {budget['batch']}, {budget['precision']}"
    rule = (f"{budget['latency_ms']:g} ms" if budget["latency_ms"] is not None
            else f"{budget['speedup']:g}x the teacher's speed")
    over = 100 * (now["student_ms"] - now["limit_ms"]) / now["limit_ms"]
    head = (f"the budget ({rule}) holds" if now["holds"]
            else f"the budget ({rule}) no longer holds: {over:+.1f} % over")
    figures = (f"student {now['student_ms']:.3g} ms vs limit {now['limit_ms']:.3g} ms ({how}; certified "
               f"{then['student_ms']:.3g} vs {then['limit_ms']:.3g} ms), {now['speedup']:.1f}x "
               f"(certified {then['speedup']:.1f}x)")
    changes = changed_files + ([f"environment: {'; '.join(changed_env)}"] if changed_env else [])
    return f"{head}: {figures}" + (f"; {'; '.join(changes)}" if changes else "; nothing changed")
