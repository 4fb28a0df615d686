"""``python -m metatl.sweep SPEC [--count N] [key=value ...]`` or ``--resume SWEEP_DIR``: run a
W&B sweep spec offline, one trial at a time, with W&B's own search engine."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from metatl.cli import run_main
from metatl.sweeping import (
    SweepController,
    SweepSpecError,
    SweepState,
    load_spec,
    ranking_table,
    spec_from_dict,
    write_report,
    write_results,
)
from metatl.training.distributed import single_process


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metatl.sweep",
        description="Run a W&B sweep spec (configs/sweeps/*.yaml) without a W&B server: W&B's "
        "search engine (the sweeps package) suggests each trial and stops poor ones early "
        "(hyperband); each trial is the spec's command, a normal python -m metatl.train run in "
        "<sweep dir>/trials/. Writes sweep.json as it goes, then results.json and report.md.",
        epilog="Extra key=value overrides apply to every trial, e.g. tracking.wandb.mode=disabled.",
    )
    parser.add_argument("spec", nargs="?", help="the sweep spec (YAML, as for `wandb sweep`)")
    parser.add_argument(
        "--count",
        type=int,
        help="trials to start (default: until the grid is exhausted or the spec's run_cap)",
    )
    parser.add_argument("--out-dir", default="runs/sweeps", help="where sweep directories go")
    parser.add_argument("--name", help="sweep directory name prefix (default: the spec's stem)")
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between metric checks")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of random and bayes search (kept on --resume)"
    )
    parser.add_argument(
        "--kill-delay", type=float, default=30.0, help="seconds a stopped trial gets to exit"
    )
    parser.add_argument(
        "--resume", metavar="SWEEP_DIR", help="continue a sweep: --count more trials"
    )
    args, overrides = parser.parse_known_args(argv)

    def body() -> int:
        # The controller runs once; a spec's command may start each trial under torchrun.
        single_process("python -m metatl.sweep")
        controller = _controller(args, overrides)
        try:
            with _sigterm_as_interrupt():
                controller.run(args.count)
        finally:
            state, spec = controller.state, controller.spec
            write_results(state, spec)
            report = write_report(state, spec)
            print(f"\nSweep {state.name}: {state.ended or 'interrupted'}\n")
            print(ranking_table(state, spec))
            print(f"\nRun directories are relative to {state.dir}; report: {report}")
        return 0

    return run_main(body)


def _controller(args: argparse.Namespace, overrides: list[str]) -> SweepController:
    if args.count is not None and args.count < 1:
        raise SweepSpecError(f"--count must be at least 1, got {args.count}")
    if args.poll <= 0 or args.kill_delay < 0 or args.seed < 0:
        raise SweepSpecError("--poll must be > 0, --kill-delay and --seed >= 0")
    if args.resume:
        if args.spec or overrides:
            raise SweepSpecError(
                "--resume continues a sweep with its own spec and overrides; drop "
                f"{' '.join(filter(None, [args.spec, *overrides]))}"
            )
        state = SweepState.load(args.resume)
        spec = spec_from_dict(state.spec, source=state.source)
    elif not args.spec:
        raise SweepSpecError("give a sweep spec (configs/sweeps/*.yaml) or --resume SWEEP_DIR")
    else:
        spec = load_spec(args.spec)
        checked = spec.check_overrides(overrides)
    if args.count is None and spec.method != "grid" and spec.run_cap is None:
        raise SweepSpecError(
            f"a {spec.method} search never runs out of trials: give --count N "
            "(or run_cap in the spec)"
        )
    if not args.resume:
        state = SweepState.create(
            spec, args.out_dir, name=args.name, seed=args.seed, overrides=checked
        )
    controller = SweepController(state, spec, poll=args.poll, kill_delay=args.kill_delay)
    if args.resume:
        controller.recover()
    return controller


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the sweep as Ctrl-C does: the running trial checkpoints, state is saved."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
