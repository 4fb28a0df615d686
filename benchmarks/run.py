"""metatl next to its peers, one table: MAML, ANIL / top:N, ProtoNet steps and episode sampling.

    bash benchmarks/install_peers.sh        # once: learn2learn, higher, easyfsl -> .peers/meta
    python -m benchmarks                    # the default grid (prints its estimated time first)
    python -m benchmarks --rows maml --grid full --repeats 5 --out results.json
    python -m benchmarks --rows time_to_accuracy   # row 6 alone: two MAML trainings, an hour
    python benchmarks/run.py --quick        # tiny grid, 2 rounds (the test's mode)

Rows: (1) MAML meta-step, Conv-4 with BatchNorm, 5-way, 15 queries,
metatl vs learn2learn vs higher vs hand-written autograd; (2) ANIL / ``top:N`` (frozen trunk
run once) vs learn2learn's ANIL recipe and vs full MAML; (3) ProtoNet step vs easyfsl and a
minimal hand-written one; (4) episode sampling from the in-memory cache vs learn2learn's
TaskDataset over the same images; (5) 600-episode evaluation (ProtoNet + linear probe) on a
frozen Conv-4 at 84x84 and an ImageNet MobileNetV2 at 224x224, with and without the shared
feature cache (``feature_cache.py``); (6) the MAML preset trained by metatl and by learn2learn
on the glyph benchmark, side by side: step time, minutes to 90% validation accuracy, test
accuracy paired on the same episodes (``time_to_accuracy.py``; not in the default rows: it
takes an hour); (7) achieved GFLOP/s of each step against this device's GEMM peak at the
precision used, measured in the same run.

Every method of a setting starts from the same weights and sees the same episodes. Before any
timing, one instrumented step per method (no optimizer step) gives the meta-gradient (max
relative difference to metatl's, over all parameters), the FLOPs (FlopCounterMode) and the
peak memory (see ``benchmarks/measure.py`` for what it counts on CPU); the sum of those steps
gives the time estimate printed before the timed rounds. Timing then runs, per setting,
``--warmup`` untimed rounds and ``--repeats`` rounds, each running every method once (a full
step: zero grads, loss, backward, Adam) in a fresh shuffled order; the table shows the median
time and the median of the within-round ratios to metatl. Peers that do not import are listed
with how to install them, and their rows are left out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import measure
from benchmarks.methods import (
    Method,
    Net,
    anil_methods,
    load_peers,
    maml_methods,
    protonet_methods,
    sampling_methods,
)

STEP_ROWS = ("maml", "anil", "protonet", "sampling")
ROWS = (*STEP_ROWS, "feature_cache", "time_to_accuracy")
DEFAULT_ROWS = ROWS[:-1]  # time_to_accuracy trains two MAMLs: an hour on 2 cores
PEERS_OF = {
    "maml": ("learn2learn", "higher"),
    "anil": ("learn2learn",),
    "protonet": ("easyfsl",),
    "sampling": ("learn2learn",),
    "feature_cache": (),
    "time_to_accuracy": ("learn2learn",),
}
SAMPLING_PER_STEP = 200


@dataclass(frozen=True)
class Setting:
    row: str
    way: int = 5
    shot: int = 1
    query: int = 15
    meta_batch: int = 4
    inner_steps: int = 1
    first_order: bool = False
    size: int = 28
    channels: int = 1
    adapt: str = "all"
    inner_lr: float = 0.4

    def label(self) -> str:
        text = (
            f"{self.size}x{self.size}x{self.channels} {self.way}w{self.shot}s{self.query}q"
            f" mb{self.meta_batch}"
        )
        if self.row in ("maml", "anil"):
            order = "1st" if self.first_order else "2nd"
            text += f" {self.inner_steps} step{'s' * (self.inner_steps > 1)} {order}"
        if self.row == "anil":
            text += f" adapt={self.adapt}"
        return text


def grid(name: str, rows: list[str]) -> list[Setting]:
    """``quick``: a tiny grid for the test; ``default``: what a 2-core CPU runs in minutes;
    ``full``: the issue's whole MAML grid (hours on a 2-core CPU at 84x84 meta-batch 32)."""
    out: list[Setting] = []
    images = ((28, 1), (84, 3))
    if name == "quick":
        tiny = {"query": 3, "meta_batch": 2}
        maml = [Setting("maml", first_order=o, inner_steps=n, **tiny) for o, n in ((0, 2), (1, 1))]
        anil = [Setting("anil", adapt=a, **tiny) for a in ("head", "top:1")]
        protonet = [Setting("protonet", query=3, meta_batch=1)]
        sampling = [Setting("sampling", query=3, meta_batch=1)]
    else:
        maml = [
            Setting("maml", shot=k, meta_batch=b, inner_steps=n, first_order=o, size=s, channels=c)
            for (s, c), k, b, n, o in itertools.product(
                images, (1, 5), (4, 32), (1, 5), (False, True)
            )
            if name == "full"
            or (s, b) == (28, 4)
            or (s, k, b, n) == (28, 1, 32, 1)
            or ((s, k, b) == (84, 1, 4) and (n == 1 or not o))
        ]
        anil = [
            Setting("anil", adapt=a, shot=k, inner_steps=n, size=s, channels=c)
            for (s, c), a, k, n in itertools.product(images, ("head", "top:1"), (1, 5), (1, 5))
            if name == "full" or (s == 28 and n == 1) or (s, a, k, n) == (84, "head", 1, 1)
        ]
        protonet = [
            Setting("protonet", shot=k, size=s, channels=c, meta_batch=1)
            for (s, c), k in itertools.product(images, (1, 5))
        ]
        sampling = [Setting("sampling", shot=k, meta_batch=1) for k in (1, 5)]
    by_row = {"maml": maml, "anil": anil, "protonet": protonet, "sampling": sampling}
    for row in rows:
        out += by_row.get(row, [])
    return out


def build(s: Setting, peers: dict, device: torch.device, sampling_data) -> list[Method]:
    if s.row == "sampling":
        return sampling_methods(peers, sampling_data, s, SAMPLING_PER_STEP)
    net = Net.build(s.way, s.channels, s.size, device)
    episodes = measure.random_episodes(
        s.way, s.shot, s.query, channels=s.channels, size=s.size, count=s.meta_batch, device=device
    )
    builder = {"maml": maml_methods, "anil": anil_methods, "protonet": protonet_methods}[s.row]
    return builder({p: peers[p] for p in PEERS_OF[s.row] if p in peers}, net, episodes, s)


def full_step(method: Method, device: torch.device, precision: str):
    """Zero grads, ``method.backward`` under the precision's autocast, one Adam step."""
    if not method.params:
        return method.backward
    optimizer = torch.optim.Adam(method.params, lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with measure.precision_context(device, precision):
            method.backward()
        optimizer.step()

    return step


def probe_setting(s: Setting, methods: list[Method], device, precision) -> dict[str, dict]:
    """One instrumented step per method: FLOPs, peak memory, meta-gradient agreement."""
    if s.row == "sampling":
        out = {}
        for m in methods:
            start = time.perf_counter()
            m.backward()
            out[m.name] = {"seconds": time.perf_counter() - start, "note": m.note}
        return out
    probes = {m.name: measure.probe(m.backward, m.params, device, precision) for m in methods}
    reference = probes[methods[0].name].grads
    out = {}
    for m in methods:
        p = probes[m.name]
        agree = None
        if m is not methods[0] and m.compare_grads:
            agree = measure.max_relative_difference(reference, p.grads)
        out[m.name] = {
            "seconds": p.seconds,
            "flops": p.flops,
            "peak_memory_bytes": p.peak_bytes,
            "grad_max_rel_diff": agree,
            "note": m.note,
        }
    return out


def time_setting(s: Setting, methods: list[Method], args, device) -> measure.RoundTimes:
    steps = {m.name: full_step(m, device, args.precision) for m in methods}
    return measure.interleaved_rounds(steps, methods[0].name, args.repeats, args.warmup, device)


def summarise(s: Setting, probed: dict, times: measure.RoundTimes, peak: float) -> list[dict]:
    per = SAMPLING_PER_STEP if s.row == "sampling" else 1
    rows = []
    for name, info in probed.items():
        med = measure.median(times.seconds[name]) / per
        row = {
            "row": s.row,
            "setting": s.label(),
            "config": asdict(s),
            "method": name,
            "median_ms": 1e3 * med,
            "min_ms": 1e3 * min(times.seconds[name]) / per,
            "ratio_to_metatl": measure.median(times.ratios[name]),
            "times_ms": [1e3 * t / per for t in times.seconds[name]],
            **{k: v for k, v in info.items() if k != "seconds"},
        }
        if s.row == "sampling":
            row["unit"] = "ms per episode"
        else:
            row["unit"] = "ms per step"
            row["gflops_per_s"] = info["flops"] / med / 1e9
            row["percent_of_peak"] = 100 * row["gflops_per_s"] / peak
        rows.append(row)
    return rows


def feature_cache_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Row 5: ``evaluate`` (ProtoNet + linear probe, 5-way 1-shot) on a frozen backbone with
    and without the shared feature cache, in interleaved rounds (``feature_cache.py``)."""
    from benchmarks import feature_cache

    settings = (
        [feature_cache.Setting("conv4", 28, 6, 16, 4)]
        if args.quick
        else [
            feature_cache.Setting("conv4", 84, 20, 30, 30),
            feature_cache.Setting("mobilenet_v2", 224, 10, 20, 5),
        ]
    )
    rows = []
    for setting in settings:
        print(f"[time] feature_cache {setting.label()}", file=sys.stderr, flush=True)
        result = feature_cache.run_setting(setting, args.repeats, 0 if args.quick else 600, device)
        label = f"{result['label']} {result['weights']}, 5w1s15q, protonet + linear"
        for path, method in (("cached", "metatl"), ("uncached", "metatl, uncached")):
            seconds = [1e3 * t / result["episodes"] for t in result["seconds"][path]]
            ratio = measure.median(result["ratios"]) if path == "uncached" else 1.0
            row = {
                "row": "feature_cache",
                "setting": label,
                "config": {"episodes": result["episodes"], "images": result["images"]},
                "method": method,
                "median_ms": measure.median(seconds),
                "min_ms": min(seconds),
                "ratio_to_metatl": ratio,
                "times_ms": seconds,
                "unit": "ms per episode",
                "note": "accuracies identical",
            }
            if extra := result.get("extrapolated"):
                key = f"{path}_s"
                row[f"seconds_for_{extra['episodes']}_episodes"] = extra[key]
                kind = "measured" if path == "cached" else "extrapolated"
                row["note"] += f"; {extra['episodes']} episodes {extra[key]:.0f} s {kind}"
            rows.append(row)
    return rows


def time_to_accuracy_rows(args: argparse.Namespace, peers: dict) -> tuple[list[dict], str]:
    """Row 6: the MAML preset trained by metatl and by learn2learn, side by side
    (``time_to_accuracy.py``); the rows and their own table."""
    from benchmarks import time_to_accuracy

    argv = ["--out", str(args.work_dir / "time_to_accuracy"), "--data", str(args.data_root)]
    argv += ["--libraries", "metatl", *(["learn2learn"] if "learn2learn" in peers else [])]
    summary = time_to_accuracy.run(time_to_accuracy.parse_args(argv + ["--quick"] * args.quick))
    if summary is None:
        raise SystemExit("the time_to_accuracy row failed (its output above says why)")
    reference = next(r["median_step_ms"] for r in summary["rows"] if r["library"] == "metatl")
    rows = [
        {
            "row": "time_to_accuracy",
            "setting": f"MAML preset 28x28x1 5w1s15q mb4, {r['steps']} steps",
            "method": r["library"],
            "median_ms": r["median_step_ms"],
            "ratio_to_metatl": r["median_step_ms"] / reference,
            "unit": "ms per step",
            "note": "concurrent 1-thread processes; ratio of medians",
            **{k: v for k, v in r.items() if k != "library"},
        }
        for r in summary["rows"]
    ]
    return rows, time_to_accuracy.markdown(summary["rows"])


def markdown(rows: list[dict]) -> str:
    lines = [
        "| row | setting | method | median ms | ratio to metatl | peak MiB | GFLOP/s "
        "| % of peak | grad rel. diff |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]

    def num(value, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    def ms(value: float) -> str:
        return format(value, ".0f" if value >= 100 else ".1f" if value >= 1 else ".3f")

    for r in rows:
        grad = num(r.get("grad_max_rel_diff"), ".1e")
        if grad == "—" and r.get("note"):
            grad = f"— ({r['note']})"
        elif r.get("note"):
            grad += f" ({r['note']})"
        mib = r.get("peak_memory_bytes")
        lines.append(
            f"| {r['row']} | {r['setting']} | {r['method']} | {ms(r['median_ms'])} "
            f"| {r['ratio_to_metatl']:.2f} | {num(mib and mib / 2**20, '.1f')} "
            f"| {num(r.get('gflops_per_s'), '.1f')} | {num(r.get('percent_of_peak'), '.1f')} "
            f"| {grad} |"
        )
    return "\n".join(lines)


def machine(device: torch.device, peaks: dict[str, float]) -> dict:
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gemm_peak_gflops": peaks,
        "memory_measure": measure.MEMORY_MEASURE["cuda" if device.type == "cuda" else "cpu"],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=ROWS,
        default=list(DEFAULT_ROWS),
        help="default: all but time_to_accuracy",
    )
    parser.add_argument("--grid", choices=("default", "full"), default="default")
    parser.add_argument("--quick", action="store_true", help="tiny grid, 2 rounds (tests)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds per setting")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument(
        "--match", nargs="+", default=[], help="keep the settings whose label has all of these"
    )
    parser.add_argument("--no-peers", action="store_true", help="metatl and hand-written only")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path("data/glyphs"),
        help="images for the sampling row (random ones if not built)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("runs/benchmarks"),
        help="where time_to_accuracy keeps its runs (metatl's best.pt for metatl.evaluate)",
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from metatl.training.device import resolve_device

    device = resolve_device(args.device)
    settings = grid("quick" if args.quick else args.grid, args.rows)
    settings = [s for s in settings if all(m in s.label() for m in args.match)]
    whole_rows = [r for r in args.rows if r not in STEP_ROWS]  # --match does not filter them
    if not settings and not whole_rows:
        print(f"no setting of the grid matches {args.match}", file=sys.stderr)
        return 2
    wanted = sorted({p for r in args.rows for p in PEERS_OF[r]})
    peers, missing = (
        ({}, dict.fromkeys(wanted, "--no-peers")) if args.no_peers else load_peers(tuple(wanted))
    )
    for name, why in missing.items():
        print(f"peer {name} left out: {why}")
    sampling_data = None
    if "sampling" in args.rows:
        from benchmarks.episode_sampling import load_data

        sampling_data = load_data(args.data_root, args.quick, 28)

    peaks = {p: measure.gemm_peak(device, p) for p in ("fp32", "bf16")}
    print(
        f"GEMM peak on {device} with {torch.get_num_threads()} thread(s): "
        + ", ".join(f"{p} {v:.0f} GFLOP/s" for p, v in peaks.items())
    )
    start = time.perf_counter()
    probed = []
    for i, s in enumerate(settings, 1):
        print(f"[probe {i}/{len(settings)}] {s.row} {s.label()}", file=sys.stderr, flush=True)
        probed.append(
            probe_setting(s, build(s, peers, device, sampling_data), device, args.precision)
        )
    step_s = sum(v["seconds"] for p in probed for v in p.values())
    if settings:
        print(
            f"{len(settings)} settings probed in {time.perf_counter() - start:.0f} s; estimated "
            f"timing: {step_s * (args.warmup + args.repeats) / 60:.1f} min "
            f"({args.warmup} warm-up + {args.repeats} rounds)",
            flush=True,
        )
    results = []
    for i, (s, info) in enumerate(zip(settings, probed, strict=True), 1):
        print(f"[time {i}/{len(settings)}] {s.row} {s.label()}", file=sys.stderr, flush=True)
        methods = build(s, peers, device, sampling_data)
        results += summarise(s, info, time_setting(s, methods, args, device), peaks[args.precision])
    if "feature_cache" in args.rows:
        results += feature_cache_rows(args, device)
    accuracy_table = ""
    if "time_to_accuracy" in args.rows:
        rows, accuracy_table = time_to_accuracy_rows(args, peers)
        results += rows
    print(
        f"\n{args.precision}, {device}, {torch.get_num_threads()} thread(s), median of "
        f"{args.repeats} interleaved rounds; ratio: median of within-round ratios to metatl; "
        f"peak memory: {measure.MEMORY_MEASURE['cuda' if device.type == 'cuda' else 'cpu']}; "
        f"% of the {args.precision} GEMM peak ({peaks[args.precision]:.0f} GFLOP/s); grad rel. "
        "diff: max |g - g_metatl| / max |g_metatl| over all parameters, same weights and episodes"
        "\n"
    )
    print(markdown(results))
    if accuracy_table:
        print("\nRow 6, the MAML preset trained by each library (test: paired with metatl)\n")
        print(accuracy_table)
    if args.out:
        payload = {
            "settings": {
                **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "grid": "quick" if args.quick else args.grid,
                "sampling_episodes_per_step": SAMPLING_PER_STEP,
            },
            "machine": machine(device, peaks),
            "missing_peers": missing,
            "results": results,
        }
        args.out.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
