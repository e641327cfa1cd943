"""`bcrdist jobs RUN_DIR [--cancel]`: the jobs `bcrdist submit` recorded in RUN_DIR/submissions.jsonl (for a
sweep, RUN_DIR is its base folder), each with its array index, run directory, submission time and current
state (from sacct, else squeue or scontrol, else unknown; local jobs from submitit's files), and with
`--cancel` the cancellation of every one that has not ended (`bcrdist.launch.jobs`)."""

from __future__ import annotations

import argparse

from bcrdist.launch.jobs import cancel_jobs, job_states, recorded_jobs


def add_jobs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory given to bcrdist submit (a sweep's base)")
    p.add_argument("--cancel", action="store_true",
                   help="cancel (scancel) every recorded job that is pending or running, and list them")


def run_jobs(args: argparse.Namespace) -> int:
    jobs = recorded_jobs(args.run_dir)
    states = job_states(jobs)
    if args.cancel:
        cancelled = cancel_jobs(jobs, states)
        for job in cancelled:
            print(f"cancelled job {job.job_id} ({states[job.job_id].text}): run {job.run_dir}")
        ended = len(jobs) - len(cancelled)
        print(f"cancelled {len(cancelled)} of {len(jobs)} recorded job(s)"
              + (f"; {ended} had ended" if ended else ""))
        return 0
    rows = [("JOB", "INDEX", "SUBMITTED", "STATE", "RUN")]
    rows += [(job.job_id, "-" if job.index is None else str(job.index), job.submitted,
              states[job.job_id].text, job.run_dir) for job in jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    return 0
