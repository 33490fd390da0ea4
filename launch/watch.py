"""Keep a run going on spot or preemptible TPUs: recreate the slice when it is taken back, resume, until done.

    python launch/tpu_vm.py watch climb-v4-32 --zone=us-central2-b --accelerator-type=v4-32 --spot \\
        --config=configs/vanilla.py:small,bf16 --workdir=gs://my-bucket/runs/vanilla_small

A spot or preemptible slice that is taken back stays dead until someone relaunches it; this loop is
that someone. Each round it asks, in this order:

  1. Is the run done? A finished run writes `<workdir>/done.json` last (after its final evaluation),
     so the loop reads that one file (`gcloud storage cat`): on gs://, where a dead slice cannot take it.
  2. What state is the slice in? Taken back (a TPU VM `PREEMPTED` or `TERMINATED`, a queued resource
     `SUSPENDED` or `FAILED`) or missing: delete what is left and create it again. On its way
     (`CREATING`, `WAITING_FOR_RESOURCES`, ...): wait. Anything else (`STOPPED`, ...) was done by a
     person: stop and say so.
  3. After a (re)creation: put the code on every worker and install (`setup`).
  4. Run on every worker and wait for it to exit. The run resumes from its last checkpoint in the
     workdir by itself, so a relaunch is the same command again.

When the run exits without being done and the slice is still healthy, the exit status decides: 0 (it
stopped on SIGTERM and saved, e.g. host maintenance) and 255 (ssh lost the connection) relaunch; any
other status (2: a bad config, a diverged loss, a checkpoint that does not fit) is the run's own
failure, not a preemption, and ends the loop with the run's `error:` line. Every relaunch after the
first counts against `--max-restarts`, so a run that cannot finish never loops forever.

`--dry-run` prints every gcloud command the loop can run, in the order of a round. The launcher stays
standard-library Python: the loop runs on a laptop (or a small always-on VM) with `gcloud`.
"""

from __future__ import annotations

import json
import sys
import time
from argparse import Namespace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launch import tpu_commands as tc  # noqa: E402
from launch.common import Command, Comment, LaunchError, Step, capture, execute, stream  # noqa: E402

# Written by the training loop (`climb_jax.train.loop.DONE_FILE`; a test keeps the two equal) when the run
# has nothing left to do. The launcher stays free of the training stack, so the name is repeated here.
DONE_FILE = "done.json"

# What each state of the slice means to the loop. Queued resources: ACTIVE ...; TPU VMs: READY ...
USABLE = frozenset({"READY", "ACTIVE"})
TAKEN_BACK = frozenset({"PREEMPTED", "TERMINATED", "SUSPENDED", "FAILED"})
ON_ITS_WAY = frozenset({"CREATING", "STARTING", "RESTARTING", "REIMAGING", "REPAIRING", "UNHIDING", "DELETING",
                        "ACCEPTED", "PROVISIONING", "WAITING_FOR_RESOURCES", "SUSPENDING"})
MISSING = "MISSING"
SSH_LOST = 255  # gcloud's ssh: the connection dropped (a host going away)


def done_query(args) -> Command:
    return Command(("gcloud", "storage", "cat", f"{args.workdir.rstrip('/')}/{DONE_FILE}"))


def check(args) -> None:
    """What the loop needs that a plain `run` does not: a gs:// workdir (a recreated slice starts with
    empty disks, and the loop reads the done marker from this machine) and a sane cap."""
    if not args.accelerator_type:
        raise LaunchError("watch needs --accelerator-type, the slice to create (e.g. v4-32).")
    if not (args.workdir or "").startswith("gs://"):
        raise LaunchError(f"watch needs --workdir=gs://BUCKET/PATH (got {args.workdir!r}): a recreated slice "
                          "starts with empty disks, so checkpoints must live in a bucket.")
    if args.max_restarts < 0:
        raise LaunchError(f"--max-restarts={args.max_restarts}: give 0 or more.")
    if args.preemptible and args.queued:
        raise LaunchError("--preemptible applies to plain TPU VMs; queued resources take --spot or --reserved.")


def plan_watch(args) -> list[Step]:
    """Every command of one round, for `--dry-run` (and the pre-flight, which runs once, first)."""
    check(args)
    args.wait, args.detach = False, False  # the loop itself waits for the state (and recreates)
    word = "ACTIVE" if args.queued else "READY"
    return [
        *([] if args.no_preflight else tc.plan_preflight(args)),
        Comment(f"watch {args.name} until {args.workdir.rstrip('/')}/{DONE_FILE} exists, relaunching at most "
                f"{args.max_restarts} times; each round:"),
        Comment("1. is the run done? (exit status 0: yes, stop here)"),
        done_query(args),
        Comment(f"2. the slice's state: {word} goes on; {', '.join(sorted(TAKEN_BACK))} or none: recreate; "
                f"CREATING and the like: ask again in {args.poll_seconds:g} s"),
        tc.state_query(args),
        Comment("3. taken back: delete what is left of it (skipped when there is none), then create it again"),
        *tc.plan_delete(args),
        *tc.plan_create(args),
        Comment("4. after a (re)creation: the code and the installation on every worker"),
        *tc.plan_setup(args),
        Comment("5. run until it exits (it resumes from the last checkpoint); a failure that is not a "
                "preemption stops the loop"),
        *tc.plan_run(args, preflight=False),
    ]


class Watch:
    """The loop of the module docstring. `sleep` is injectable so tests need not wait."""

    def __init__(self, args: Namespace, sleep=time.sleep):
        check(args)
        args.wait, args.detach = False, False  # the loop itself waits for the state (and recreates)
        self.args, self.sleep, self.gcloud = args, sleep, args.gcloud
        self.counts = {"recreated": 0, "relaunched": 0}

    def say(self, text: str) -> None:
        print(f"# watch: {text}", file=sys.stderr, flush=True)

    def done(self) -> dict | None:
        result = capture(done_query(self.args).argv, gcloud=self.gcloud)
        if result.returncode != 0:
            return None
        try:
            found = json.loads(result.stdout or "{}")
        except json.JSONDecodeError:
            found = None
        return found if isinstance(found, dict) else {}

    def state(self) -> str:
        result = capture(tc.state_query(self.args).argv, gcloud=self.gcloud)
        if result.returncode == 0:
            return result.stdout.strip().upper() or "UNKNOWN"
        text = result.stderr.strip()
        if "NOT_FOUND" in text or "not found" in text.lower():
            return MISSING
        raise LaunchError(f"cannot read the state of {self.args.name}: {text.splitlines()[-1] if text else 'gcloud failed'}"
                          f" (exit status {result.returncode}).")

    def count(self, what: str, why: str) -> None:
        """One more recreation or relaunch; past `--max-restarts` the loop stops (the run is saved)."""
        self.counts[what] += 1
        cap = self.args.max_restarts
        if self.counts[what] > cap:
            raise LaunchError(f"{why}, and the slice was {what} {cap} times already (--max-restarts={cap}); the run "
                              f"stopped at its last checkpoint in {self.args.workdir}. Rerun the same watch command "
                              "to go on.")
        self.say(f"{why}: {what} {self.counts[what]} of at most {cap}")

    def ready_slice(self, first_round: bool) -> bool:
        """Waits until the slice is usable, recreating it when it is taken back or missing (counted, but
        for creating a missing slice in the first round); True when it was (re)created."""
        created, said = False, None
        while True:
            state = self.state()
            if state in USABLE:
                return created
            if state in TAKEN_BACK or state == MISSING:
                if not (first_round and state == MISSING and not created):
                    self.count("recreated", f"{self.args.name} is {state.lower()}")
                if state != MISSING:
                    execute(tc.plan_delete(self.args), gcloud=self.gcloud)
                try:
                    execute(tc.plan_create(self.args), gcloud=self.gcloud)
                except LaunchError as e:
                    hint = "" if self.args.queued else "; with --queued the request waits for capacity instead"
                    raise LaunchError(f"could not create {self.args.name} ({e}){hint}. The run is at its last "
                                      "checkpoint: rerun the same watch command to go on.") from None
                created = True
            elif state in ON_ITS_WAY:
                if said != state:
                    self.say(f"{self.args.name} is {state}; asking again every {self.args.poll_seconds:g} s")
                said = state
                self.sleep(self.args.poll_seconds)
            else:
                raise LaunchError(f"{self.args.name} is {state}, which this loop leaves to a person (start or delete "
                                  "it); then rerun the same watch command.")

    def loop(self) -> dict:
        """Runs until done; returns done.json's contents. Raises `LaunchError` for a failed run or the cap."""
        if not self.args.no_preflight:
            execute(tc.plan_preflight(self.args), gcloud=self.gcloud)
        runs, why, finished = 0, "", self.done()
        while finished is None:
            created = self.ready_slice(first_round=runs == 0)
            if created or runs == 0:  # a new slice has empty disks; the first round refreshes the code
                execute(tc.plan_setup(self.args), gcloud=self.gcloud)
                execute(tc.plan_prepare(self.args), gcloud=self.gcloud)  # once: a prepared corpus is reused
            if runs:
                self.count("relaunched", why)
            runs += 1
            self.say(f"running on {self.args.name} (it resumes from the last checkpoint in {self.args.workdir})")
            code, error = stream(tc.run_command(self.args).argv, gcloud=self.gcloud)
            finished = self.done()
            if finished is not None:
                return finished
            self.sleep(self.args.poll_seconds)  # a preemption notice comes before the slice's state changes
            state = self.state()
            if state not in USABLE:
                why = f"the run stopped (exit status {code}) and {self.args.name} is {state.lower()}"
            elif code in (0, SSH_LOST):
                why = (f"the run stopped before it was done (exit status {code}) on a healthy slice"
                       if code == 0 else "the connection to the slice dropped (exit status 255)")
            else:
                raise LaunchError(f"the run failed with exit status {code} and {self.args.name} is {state}, so this is "
                                  f"not a preemption: {error or 'see its output above'}. Fix the cause and rerun the "
                                  "same watch command; the run resumes from its last checkpoint.")
        return finished


def main(args: Namespace) -> int:
    finished = Watch(args).loop()
    print(f"done: {args.workdir} is complete" + (f" (step {finished['step']})" if "step" in finished else "")
          + f"; the slice still exists: `delete {args.name} --zone={args.zone}"
          + (" --queued" if args.queued else "") + "` when you no longer need it", flush=True)
    return 0
