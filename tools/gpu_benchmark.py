"""Certification speed on an accelerator, in one prepared command.

For two ImageNet-sized stacks -- the paper's `imagenet` auto-encoder (299) + Inception-v3 (random weights: speed
does not depend on them; BatchNorm recalibrated on real photos so that fp16 holds its numbers) and the shipped
photo front-end `pretrained/natural-ae-L0.1` + EfficientNet-Lite0 -- and for each precision (fp32, bf16 where
the GPU computes it natively, fp16 autocast of the noisy forwards):
  - the best batch size, by a short sweep of the post-noise model alone (the floor, seconds per draw), with the
    peak GPU memory of each batch size (reset before each);
  - seconds per image to certify at n = 100, 300, 1000, 10000 draws, our engine (`sampler.sample_votes`, as
    `dpae certify`) beside the reference loop of Cohen et al.'s core.py (tools/benchmark.py; fp32, so timed
    once per stack, with the first precision, and reused for the others), the efficiency of ours against the
    floor, and the peak memory of those runs;
  - against fp32: the share of draws with the same argmax and the relative logit difference;
and once per stack whether the votes on the GPU equal the CPU's given the same noisy inputs (the noise is drawn
on the CPU and copied, since CPU and CUDA generators give other streams for one seed), fp32 with TF32 off and
then on (torch's default for cuDNN convolutions), with the draws that differ counted and their logit margins and
relative logit differences reported.

It prints torch, timm, CUDA and the GPU before anything else, and rewrites docs/benchmarks-gpu.md and its .json
after every precision of every stack: a run stopped at a time limit keeps what it measured.  A stack or a
precision that fails (out of memory, a CUDA error) is recorded with its error and the run goes on.  Every figure
is the median of --reps runs.

Examples:
  set -o pipefail; python tools/gpu_benchmark.py --device cuda --quiet 2>&1 | tee docs/benchmarks-gpu.log
                                                # expected 5-10 minutes on one recent GPU: never measured yet
  python tools/gpu_benchmark.py --quick --out /tmp/g.md        # reduced CPU mode (CI): tiny n, no timing claims
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PAPER_CERTIFY_S = 0.42  # Lecuyer et al. 2019: 300 draws of AE + Inception-v3 per image on their GPU


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("dpae_benchmark_tool", REPO / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _benchmark_module()


def device_info(device: torch.device) -> dict:
    info = bench.machine(device)
    info["cuda"] = torch.version.cuda
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    info["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    from dp_autoencoder.distributed import bf16_is_native

    info["bf16_native"] = bf16_is_native(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2 ** 30, 1)
        info["multiprocessors"] = props.multi_processor_count
        info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    return info


def supported(precision: str, device: torch.device) -> str | None:
    """None when ``precision`` is measured on ``device``, else why not."""
    from dp_autoencoder.distributed import bf16_is_native

    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "bf16" and not bf16_is_native(device):
            return "bf16 is emulated on this GPU (no native bf16 units): skipped"
        return None
    if precision == "bf16":
        return None
    return f"{precision} autocast on a CPU is emulated and says nothing"


peak_memory = bench.peak_memory


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 for CUDA matmuls and cuDNN convolutions on or off inside the block (torch's defaults: matmul off,
    cuDNN on), restored after."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@torch.inference_mode()
def cpu_vs_device(stack, device: torch.device, images: int, draws: int, tf32_on: bool = False) -> dict:
    """Argmax votes of the same noisy inputs (pre-noise map and noise computed once, on the CPU) through the
    post-noise network and the classifier on the CPU and on ``device``, both fp32 (TF32 on ``device`` as asked)."""
    import copy

    cpu_model, dev_model = copy.deepcopy(stack.model).to("cpu"), copy.deepcopy(stack.model).to(device)
    size = tuple(stack.images.shape[-2:])
    result = {"images": images, "draws": draws, "tf32": tf32_on, "equal_images": 0, "differing_draws": 0,
              "max_vote_diff": 0, "max_abs_logit_diff": 0.0, "max_rel_logit_diff": 0.0,
              "median_rel_logit_diff": None, "margins_of_differing_draws": []}
    rel_all = []
    for i in bench.progress(range(images), desc=f"CPU vs {device.type}: images", unit="image"):
        z = cpu_model.pre_noise(stack.images[i:i + 1])
        noisy = z + cpu_model.sample_noise((draws, *z.shape[1:]), bench.generator(0, "cpu-vs-device", i))
        chunks = range(0, draws, 25)
        on_cpu = torch.cat([cpu_model.logits_from_noisy(noisy[j:j + 25], size) for j in chunks])
        with tf32(tf32_on):
            on_dev = torch.cat([dev_model.logits_from_noisy(noisy[j:j + 25].to(device), size).float().cpu()
                                for j in chunks])
        a, b = on_cpu.argmax(1), on_dev.argmax(1)
        differ = (a != b).nonzero().flatten().tolist()
        top2 = on_cpu.topk(2, dim=1).values
        votes_a = np.bincount(a.numpy(), minlength=stack.num_classes)
        votes_b = np.bincount(b.numpy(), minlength=stack.num_classes)
        rel = bench.relative_logit_differences(on_cpu, on_dev)
        rel_all.append(rel)
        result["equal_images"] += int((votes_a == votes_b).all())
        result["differing_draws"] += len(differ)
        result["max_vote_diff"] = max(result["max_vote_diff"], int(np.abs(votes_a - votes_b).max()))
        result["max_abs_logit_diff"] = max(result["max_abs_logit_diff"], float((on_cpu - on_dev).abs().max()))
        result["max_rel_logit_diff"] = max(result["max_rel_logit_diff"], float(rel.max()))
        result["margins_of_differing_draws"] += [float(top2[j, 0] - top2[j, 1]) for j in differ]
    result["median_rel_logit_diff"] = float(torch.cat(rel_all).median())
    return result


def failure(e: BaseException) -> dict:
    return {"error": f"{type(e).__name__}: {e}".strip()[:2000], "traceback": traceback.format_exc()[-6000:]}


def free(device: torch.device) -> None:
    if device.type == "cuda":
        with contextlib.suppress(Exception):  # after a CUDA error the context may refuse even this
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()


def run_precision(stack, precision, args, device, log, reference) -> dict:
    amp = bench.PRECISIONS[precision]
    s = bench.Settings(device, amp, precision, args.reps, args.images_per_step, True, False)
    ours = bench.our_model(stack, s)
    t0 = time.perf_counter()
    x1 = stack.images[0].to(device)
    log(f"[{stack.name}] {precision}: batch sweep {args.batch_sizes}")
    floor = bench.measure_floor(ours, x1, args.batch_sizes, args.reps, amp, device, args.sweep_draws, log)
    batch = min(floor, key=lambda b: floor[b]["s_per_draw"])
    row = {"batch_size": batch, "floor": floor}
    if amp is not None:
        row["agreement"] = bench.precision_agreement(stack.model, stack.images[:2].to(device), amp, device,
                                                     min(batch, 256))
        a = row["agreement"]
        rel = a["rel_logit_diff_median"]
        log(f"  {precision} vs fp32: argmax equal on {a['agree']}/{a['draws']} draws, {a['nonfinite_draws']} "
            f"non-finite, relative logit difference median " + (f"{rel:.2e}" if rel is not None else "-"))
    # min_draws = images x the smallest n: that many images at the smallest n, fewer (down to one) above it.
    row["throughput"] = bench.bench_throughput(stack, ours, stack.model, args.n, batch, floor[batch]["s_per_draw"],
                                               s, args.images * min(args.n), args.images, log, refloor=True,
                                               reference=reference)
    row["peak_memory_gib"] = max((t["peak_memory_gib"] for t in row["throughput"]
                                  if t.get("peak_memory_gib") is not None), default=None)
    row["seconds"] = time.perf_counter() - t0
    return row


def run_stack(name, args, device, log, st: dict, save) -> dict:
    """Measure one stack into ``st`` (already part of the result), calling ``save`` after every part."""
    builder_args = argparse.Namespace(natural_autoencoder=args.natural_autoencoder, imagenet_train_batch=4)
    stack = bench.BUILDERS[name](builder_args, max(args.images, 2))
    st.update({"title": stack.title, "notes": stack.notes, "calibration": stack.calibration})
    save()
    if args.compare_cpu:
        st["cpu_vs_device"] = {}
        for setting in ([False, True] if device.type == "cuda" and args.compare_tf32 == "both" else [False]):
            key = "tf32_on" if setting else "tf32_off"
            log(f"[{name}] CPU vs {device.type}: same noisy inputs, fp32, TF32 {'on' if setting else 'off'}")
            try:
                c = cpu_vs_device(stack, device, args.compare_images, args.compare_draws, setting)
                log(f"  {c['equal_images']}/{c['images']} images with equal votes, {c['differing_draws']} of "
                    f"{c['images'] * c['draws']} draws differ, relative logit difference up to {c['max_rel_logit_diff']:.2e}")
            except Exception as e:  # noqa: BLE001 -- recorded, and the timings still run
                c = failure(e)
                log(f"  failed: {c['error']}")
                free(device)
            st["cpu_vs_device"][key] = c
            save()
    stack.model.to(device)
    reference = None  # the reference loop runs fp32 whatever the precision: timed with the first one only
    for precision in bench.progress(args.precisions, desc=f"{name}: precisions", unit="precision"):
        why_not = supported(precision, device)
        if why_not:
            st["precisions"][precision] = {"skipped": why_not}
            save()
            continue
        try:
            row = run_precision(stack, precision, args, device, log, reference)
            if reference is None:
                reference = row["throughput"]
                row["reference_timed_here"] = True
        except Exception as e:  # noqa: BLE001 -- one precision's failure (out of memory, ...) ends only it
            row = failure(e)
            log(f"[{name}] {precision} failed: {row['error']}")
            free(device)
        st["precisions"][precision] = row
        save()
    del stack
    free(device)
    return st


def _cpu_vs_device_line(device: str, c: dict) -> str:
    tf = "on" if c.get("tf32") else "off"
    if "error" in c:
        return f"CPU vs {device}, TF32 {tf}: failed ({c['error'].splitlines()[0]})."
    margins = c["margins_of_differing_draws"]
    return (f"CPU vs {device} on the same noisy inputs (fp32, TF32 {tf} on the device, {c['images']} images x "
            f"{c['draws']} draws): {c['equal_images']}/{c['images']} images with identical vote counts; "
            f"{c['differing_draws']} draws with another argmax (largest vote difference {c['max_vote_diff']}); "
            f"relative logit difference median {c['median_rel_logit_diff']:.2e}, largest {c['max_rel_logit_diff']:.2e} "
            f"(largest absolute {c['max_abs_logit_diff']:.2e})"
            + (f"; the CPU's top-2 logit margin on the differing draws: at most {max(margins):.2e} (near-ties that "
               "another summation order or cuDNN algorithm flips)" if margins else "") + ".")


def _gib(v) -> str:
    return f"{v:.2f}" if v is not None else "-"


def render(result: dict) -> str:
    m = result["machine"]
    gpu = m.get("gpu", "no GPU (CPU run)")
    if result.get("finished"):
        when = f"in {result['total_s'] / 60:.1f} min"
    else:
        when = (f"-- **stopped or still running**: this is what it had measured after "
                f"{result.get('elapsed_s', 0) / 60:.1f} min")
    lines = [
        "# Certification speed on an accelerator",
        "",
        f"Generated by `{result['command']}` on {result['date']} {when}.",
        "",
        f"Device: **{gpu}**" + (f" ({m['gpu_memory_gib']} GiB, {m['multiprocessors']} SMs)" if "gpu_memory_gib" in m else "")
        + f"; torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}, timm {m['timm']}; host {m['cpu']}, "
        f"{m['cores']} cores. TF32 during the timings: matmul {m['tf32_matmul']}, cuDNN convs {m['tf32_cudnn']} "
        "(torch's defaults: \"fp32\" convolutions on a GPU run in TF32).",
        "",
        "Work per image: smoothing's or PixelDP's certification with n noisy draws (pre-noise map once, n noisy "
        "forwards of the post-noise network and the classifier, argmax votes, the PixelDP bound). Ours: "
        "`sampler.sample_votes` as `dpae certify` runs it (channels_last, draws of several images packed into "
        "full batches, votes counted on the device). Reference: Cohen et al.'s loop (tools/benchmark.py), fp32, "
        "one image at a time, the pre-noise map recomputed for every copy, votes counted on the host; timed once "
        "per stack (with the first precision) and reused for the others. Floor: the post-noise model alone at "
        "the chosen batch size; efficiency = n x floor / our time. Peak GiB: the most GPU memory allocated during "
        "the certification runs at that batch size.",
        "",
    ]
    if result.get("quick"):
        lines += ["**Reduced mode** (`--quick`): tiny n and sweeps, to check that the script runs; no timing here "
                  "means anything.", ""]
    for st in result["stacks"]:
        lines += [f"## {st.get('title') or st['name']}", ""] + [f"- {n}" for n in st.get("notes", [])] + [""]
        if "error" in st:
            lines += [f"**This stack failed**: `{st['error'].splitlines()[0]}` (the traceback is in the JSON).", ""]
        for c in (st.get("cpu_vs_device") or {}).values():
            lines += [_cpu_vs_device_line(m["device"], c), ""]
        if not st.get("precisions"):
            continue
        head = "| precision | batch | n | ours s/image | reference s/image | ours / reference | floor ms/draw | efficiency | peak GiB |"
        lines += [head, "|---|---|---|---|---|---|---|---|---|"]
        for precision, row in st["precisions"].items():
            if "skipped" in row or "error" in row:
                what = row.get("skipped") or f"failed: {row['error'].splitlines()[0]}"
                lines.append(f"| {precision} | - | - | {what} | | | | | |")
                continue
            for t in row["throughput"]:
                lines.append(f"| {precision} | {row['batch_size']} | {t['n']:,} | {t['ours_s'] / t['images']:.4f} | "
                             f"{t['reference_s'] / t['images']:.4f} | {t['ratio']:.2f}x | "
                             f"{t['floor_s_per_draw'] * 1e3:.4f} | {t['efficiency']:.2f} | {_gib(t.get('peak_memory_gib'))} |")
        lines.append("")
        for precision, row in st["precisions"].items():
            if "floor" not in row:
                continue
            sweep = ", ".join(f"{b}: {v['s_per_draw'] * 1e3:.4f}" + (f" ({_gib(v['peak_memory_gib'])} GiB)"
                                                                    if v.get("peak_memory_gib") is not None else "")
                              for b, v in row["floor"].items())
            text = f"- {precision}: batch sweep (ms/draw, peak memory of that batch size): {sweep}"
            if "agreement" in row:
                a = row["agreement"]
                rel = (f"relative logit difference to fp32 median {a['rel_logit_diff_median']:.2e}, largest "
                       f"{a['rel_logit_diff_max']:.2e}" if a.get("rel_logit_diff_max") is not None else
                       "no finite logit")
                text = (f"- {precision}: argmax equal to fp32 on {a['agree']}/{a['draws']} draws "
                        f"({100 * a['share']:.2f}%), {a.get('nonfinite_draws', 0)} draws with a non-finite logit, "
                        f"{rel}; batch sweep (ms/draw, peak memory of that batch size): {sweep}")
            lines.append(text)
        lines.append("")
    paper = result.get("paper_comparison")
    if paper:
        lines += ["## Against the paper", "", paper, ""]
    return "\n".join(lines)


def save(result: dict, out: Path, t_start: float) -> None:
    """The JSON and the Markdown as they stand, each written whole (a temporary file renamed)."""
    result["elapsed_s"] = time.perf_counter() - t_start
    result["paper_comparison"] = paper_comparison(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((out.with_suffix(".json"), json.dumps(result, indent=1, default=str) + "\n"),
                       (out, render(result))):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def paper_comparison(result: dict) -> str | None:
    inception = next((st for st in result["stacks"] if st["name"] == "inception"), None)
    if not inception:
        return None
    best = None
    for precision, row in inception.get("precisions", {}).items():
        for t in row.get("throughput", []):
            if t["n"] == 300 and (best is None or t["ours_s"] / t["images"] < best[1]):
                best = (precision, t["ours_s"] / t["images"], t["reference_s"] / t["images"])
    if best is None:
        return None
    return (f"The paper certifies with 300 draws of its auto-encoder + Inception-v3 in {PAPER_CERTIFY_S} s per image on "
            f"its (2018) GPU. Here the same architecture takes {best[1]:.4f} s per image at n = 300 ({best[0]}, our "
            f"engine; {best[2]:.4f} s with the reference loop): {PAPER_CERTIFY_S / best[1]:.0f}x less than the paper's.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks-gpu.md"), help="the report (a .json beside it)")
    p.add_argument("--stacks", default="inception,efficientnet")
    p.add_argument("--precisions", default="fp32,bf16,fp16")
    p.add_argument("--n", type=bench.ints, default=None, help="draws per image (default 100,300,1000,10000)")
    p.add_argument("--batch-sizes", type=bench.ints, default=None, help="the sweep (default 64,128,256,512)")
    p.add_argument("--images", type=int, default=4, help="images per timed run at the smallest n (default 4)")
    p.add_argument("--images-per-step", type=int, default=8)
    p.add_argument("--reps", type=int, default=3, help="runs per figure, the median is reported (default 3)")
    p.add_argument("--sweep-draws", type=int, default=2048, help="draws per batch-size probe (default 2048)")
    p.add_argument("--compare-images", type=int, default=4)
    p.add_argument("--compare-draws", type=int, default=200)
    p.add_argument("--compare-tf32", choices=["off", "both"], default="both",
                   help="the CPU vs GPU vote comparison with TF32 off only, or off then on (default both; a CPU "
                        "run has no TF32)")
    p.add_argument("--no-compare-cpu", dest="compare_cpu", action="store_false",
                   help="skip the CPU vs device vote comparison")
    p.add_argument("--natural-autoencoder", default=str(REPO / "pretrained" / "natural-ae-L0.1"))
    p.add_argument("--quick", action="store_true", help="reduced CPU mode for CI: n 10,20, batch 8, 1 image")
    p.add_argument("--quiet", action="store_true", help="no progress bars (they go to stderr; the log stays on stdout)")
    return p


def main(argv=None) -> dict:
    """Measure and write the report; ``result["failed"]`` names the stacks and precisions that failed."""
    args = build_parser().parse_args(argv)
    bench.PROGRESS = not args.quiet
    if args.quick:
        args.n = args.n or [10, 20]
        args.batch_sizes = args.batch_sizes or [8]
        args.images, args.reps, args.sweep_draws, args.compare_images, args.compare_draws = 1, 1, 8, 1, 10
        args.precisions = "fp32,bf16"
    args.n = args.n or [100, 300, 1000, 10000]
    args.batch_sizes = args.batch_sizes or [64, 128, 256, 512]
    args.precisions = [x for x in args.precisions.split(",") if x]
    unknown = set(args.precisions) - set(bench.PRECISIONS)
    if unknown or args.reps < 1:
        raise SystemExit(f"gpu_benchmark: unknown precisions {sorted(unknown)} or --reps < 1")
    stacks = [x for x in args.stacks.split(",") if x]
    if not stacks or set(stacks) - set(bench.BUILDERS):
        raise SystemExit(f"gpu_benchmark: unknown stacks {sorted(set(stacks) - set(bench.BUILDERS))}; choose from "
                         f"{', '.join(bench.BUILDERS)}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_benchmark: --device cuda, but no CUDA device is visible to torch "
                         f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    t_start = time.perf_counter()

    def log(msg):  # tqdm.write: the same line on stdout, with the bars on stderr moved out of its way
        bench.tqdm.write(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", file=sys.stdout)
        sys.stdout.flush()

    machine = device_info(device)
    log(f"torch {machine['torch']}, timm {machine['timm']}, CUDA {machine['cuda']}, cuDNN {machine['cudnn']}; "
        f"device {machine.get('gpu', device)}" + (f" ({machine['gpu_memory_gib']} GiB)" if "gpu_memory_gib" in machine
                                                  else "") + f"; host {machine['cpu']}, {machine['cores']} cores")
    out = Path(args.out)
    result = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO)] +
                                              list(sys.argv[1:] if argv is None else argv)),
              "machine": machine, "quick": args.quick, "finished": False, "stacks": []}
    save(result, out, t_start)
    for name in bench.progress(stacks, desc="gpu benchmark: stacks", unit="stack", leave=True):
        st = {"name": name, "precisions": {}}
        result["stacks"].append(st)
        try:
            run_stack(name, args, device, log, st, lambda: save(result, out, t_start))
        except Exception as e:  # noqa: BLE001 -- one stack's failure is recorded; the next one still runs
            st.update(failure(e))
            log(f"[{name}] failed: {st['error']}")
            free(device)
        save(result, out, t_start)
    result["failed"] = [st["name"] for st in result["stacks"] if "error" in st] + [
        f"{st['name']}/{p}" for st in result["stacks"] for p, row in st.get("precisions", {}).items() if "error" in row]
    result["finished"] = True
    result["total_s"] = time.perf_counter() - t_start
    save(result, out, t_start)
    log(f"wrote {out} and {out.with_suffix('.json')}" +
        (f"; FAILED: {', '.join(result['failed'])} (errors in the report)" if result["failed"] else ""))
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)  # a failed part is in the report, and the exit status says so
