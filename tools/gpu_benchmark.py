"""Certification speed on an accelerator, in one prepared command of a few minutes.

For two ImageNet-sized stacks -- the paper's `imagenet` auto-encoder (299) + Inception-v3 (random weights: speed
does not depend on them) and the shipped photo front-end `pretrained/natural-ae-L0.1` + EfficientNet-Lite0 --
and for each precision (fp32, bf16, fp16 autocast of the noisy forwards):
  - the best batch size, by a short sweep of the post-noise model alone (the floor, seconds per draw);
  - seconds per image to certify at n = 100, 300, 1000, 10000 draws, our engine (`sampler.sample_votes`, as
    `dpae certify`) beside the reference loop of Cohen et al.'s core.py (tools/benchmark.py), and the
    efficiency of ours against the floor;
  - peak GPU memory; the argmax agreement of the autocast draws with fp32;
and once per stack whether the votes on the GPU equal the CPU's given the same noisy inputs (the noise is drawn
on the CPU and copied, since CPU and CUDA generators give other streams for one seed), with the draws that
differ counted and their logit margins reported. Writes docs/benchmarks-gpu.md and a JSON naming the GPU,
torch, CUDA and cuDNN versions. Every figure is the median of --reps runs.

Examples:
  python tools/gpu_benchmark.py --device cuda                  # about 4-6 minutes on one recent GPU
  python tools/gpu_benchmark.py --quick --out /tmp/g.md        # reduced CPU mode (CI): tiny n, no timing claims
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shlex
import sys
import time
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
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2 ** 30, 1)
        info["multiprocessors"] = props.multi_processor_count
    return info


def supported(precision: str, device: torch.device) -> bool:
    if precision == "fp32":
        return True
    if device.type == "cuda":
        return precision == "fp16" or torch.cuda.is_bf16_supported()
    return precision == "bf16"  # fp16 autocast on a CPU is emulated and says nothing


def peak_memory(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


@torch.inference_mode()
def cpu_vs_device(stack, device: torch.device, images: int, draws: int) -> dict:
    """Argmax votes of the same noisy inputs (pre-noise map and noise computed once, on the CPU) through the
    post-noise network and the classifier on the CPU and on ``device``, both fp32."""
    import copy

    cpu_model, dev_model = copy.deepcopy(stack.model).to("cpu"), copy.deepcopy(stack.model).to(device)
    size = tuple(stack.images.shape[-2:])
    result = {"images": images, "draws": draws, "equal_images": 0, "differing_draws": 0, "max_vote_diff": 0,
              "max_abs_logit_diff": 0.0, "margins_of_differing_draws": []}
    for i in bench.progress(range(images), desc=f"CPU vs {device.type}: images", unit="image"):
        z = cpu_model.pre_noise(stack.images[i:i + 1])
        noisy = z + cpu_model.sample_noise((draws, *z.shape[1:]), bench.generator(0, "cpu-vs-device", i))
        chunks = range(0, draws, 25)
        on_cpu = torch.cat([cpu_model.logits_from_noisy(noisy[j:j + 25], size) for j in chunks])
        on_dev = torch.cat([dev_model.logits_from_noisy(noisy[j:j + 25].to(device), size).float().cpu() for j in chunks])
        a, b = on_cpu.argmax(1), on_dev.argmax(1)
        differ = (a != b).nonzero().flatten().tolist()
        top2 = on_cpu.topk(2, dim=1).values
        votes_a = np.bincount(a.numpy(), minlength=stack.num_classes)
        votes_b = np.bincount(b.numpy(), minlength=stack.num_classes)
        result["equal_images"] += int((votes_a == votes_b).all())
        result["differing_draws"] += len(differ)
        result["max_vote_diff"] = max(result["max_vote_diff"], int(np.abs(votes_a - votes_b).max()))
        result["max_abs_logit_diff"] = max(result["max_abs_logit_diff"], float((on_cpu - on_dev).abs().max()))
        result["margins_of_differing_draws"] += [float(top2[j, 0] - top2[j, 1]) for j in differ]
    return result


def run_stack(name, args, device, log) -> dict:
    builder_args = argparse.Namespace(natural_autoencoder=args.natural_autoencoder, imagenet_train_batch=4)
    stack = bench.BUILDERS[name](builder_args, max(args.images, 2))
    st = {"name": name, "title": stack.title, "notes": stack.notes, "precisions": {}}
    if args.compare_cpu:
        log(f"[{name}] CPU vs {device.type}: same noisy inputs, fp32")
        st["cpu_vs_device"] = cpu_vs_device(stack, device, args.compare_images, args.compare_draws)
        log(f"  {st['cpu_vs_device']['equal_images']}/{args.compare_images} images with equal votes, "
            f"{st['cpu_vs_device']['differing_draws']} of {args.compare_images * args.compare_draws} draws differ")
    stack.model.to(device)
    for precision in bench.progress(args.precisions, desc=f"{name}: precisions", unit="precision"):
        if not supported(precision, device):
            st["precisions"][precision] = {"skipped": f"{precision} autocast not supported on {device}"}
            continue
        amp = bench.PRECISIONS[precision]
        s = bench.Settings(device, amp, precision, args.reps, args.images_per_step, True, False)
        ours = bench.our_model(stack, s)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        x1 = stack.images[0].to(device)
        log(f"[{name}] {precision}: batch sweep {args.batch_sizes}")
        floor = bench.measure_floor(ours, x1, args.batch_sizes, args.reps, amp, device, args.sweep_draws, log)
        batch = min(floor, key=lambda b: floor[b]["s_per_draw"])
        row = {"batch_size": batch, "floor": floor}
        if amp is not None:
            row["agreement"] = bench.precision_agreement(stack.model, stack.images[:2].to(device), amp, device,
                                                         min(batch, 256))
        # min_draws = images x the smallest n: that many images at the smallest n, fewer (down to one) above it.
        row["throughput"] = bench.bench_throughput(stack, ours, stack.model, args.n, batch, floor[batch]["s_per_draw"],
                                                   s, args.images * min(args.n), args.images, log, refloor=True)
        row["peak_memory_gib"] = peak_memory(device)
        row["seconds"] = time.perf_counter() - t0
        st["precisions"][precision] = row
        del ours
    del stack
    return st


def render(result: dict) -> str:
    m = result["machine"]
    gpu = m.get("gpu", "no GPU (CPU run)")
    lines = [
        "# Certification speed on an accelerator",
        "",
        f"Generated by `{result['command']}` on {result['date']} in {result['total_s'] / 60:.1f} min.",
        "",
        f"Device: **{gpu}**" + (f" ({m['gpu_memory_gib']} GiB, {m['multiprocessors']} SMs)" if "gpu_memory_gib" in m else "")
        + f"; torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}, timm {m['timm']}; host {m['cpu']}, "
        f"{m['cores']} cores. TF32: matmul {m['tf32_matmul']}, cuDNN convs {m['tf32_cudnn']} (torch's defaults).",
        "",
        "Work per image: smoothing's or PixelDP's certification with n noisy draws (pre-noise map once, n noisy "
        "forwards of the post-noise network and the classifier, argmax votes, the PixelDP bound). Ours: "
        "`sampler.sample_votes` as `dpae certify` runs it (channels_last, draws of several images packed into "
        "full batches, votes counted on the device). Reference: Cohen et al.'s loop (tools/benchmark.py), fp32, "
        "one image at a time, the pre-noise map recomputed for every copy, votes counted on the host. Floor: the "
        "post-noise model alone at the chosen batch size; efficiency = n x floor / our time.",
        "",
    ]
    if result.get("quick"):
        lines += ["**Reduced mode** (`--quick`): tiny n and sweeps, to check that the script runs; no timing here "
                  "means anything.", ""]
    for st in result["stacks"]:
        lines += [f"## {st['title']}", ""] + [f"- {n}" for n in st["notes"]] + [""]
        cmp_ = st.get("cpu_vs_device")
        if cmp_:
            margins = cmp_["margins_of_differing_draws"]
            lines += [f"CPU vs {m['device']} on the same noisy inputs (fp32, {cmp_['images']} images x {cmp_['draws']} "
                      f"draws): {cmp_['equal_images']}/{cmp_['images']} images with identical vote counts; "
                      f"{cmp_['differing_draws']} draws with another argmax (largest vote difference "
                      f"{cmp_['max_vote_diff']}), largest logit difference {cmp_['max_abs_logit_diff']:.2e}"
                      + (f"; the CPU's top-2 logit margin on those draws: at most {max(margins):.2e} (near-ties that "
                         "another summation order, TF32 or another cuDNN algorithm flips)" if margins else "") + ".", ""]
        head = "| precision | batch | n | ours s/image | reference s/image | ours / reference | floor ms/draw | efficiency | peak GiB |"
        lines += [head, "|---|---|---|---|---|---|---|---|---|"]
        for precision, row in st["precisions"].items():
            if "skipped" in row:
                lines.append(f"| {precision} | - | - | {row['skipped']} | | | | | |")
                continue
            for t in row["throughput"]:
                peak = f"{row['peak_memory_gib']:.1f}" if row["peak_memory_gib"] is not None else "-"
                lines.append(f"| {precision} | {row['batch_size']} | {t['n']:,} | {t['ours_s'] / t['images']:.4f} | "
                             f"{t['reference_s'] / t['images']:.4f} | {t['ratio']:.2f}x | "
                             f"{t['floor_s_per_draw'] * 1e3:.4f} | {t['efficiency']:.2f} | {peak} |")
        lines.append("")
        for precision, row in st["precisions"].items():
            if "agreement" in row:
                a = row["agreement"]
                lines.append(f"- {precision}: argmax equal to fp32 on {a['agree']}/{a['draws']} draws "
                             f"({100 * a['share']:.2f}%); batch sweep (ms/draw): " + ", ".join(
                                 f"{b}: {v['s_per_draw'] * 1e3:.4f}" for b, v in row["floor"].items()))
            elif "floor" in row:
                lines.append(f"- {precision}: batch sweep (ms/draw): " + ", ".join(
                    f"{b}: {v['s_per_draw'] * 1e3:.4f}" for b, v in row["floor"].items()))
        lines.append("")
    paper = result.get("paper_comparison")
    if paper:
        lines += ["## Against the paper", "", paper, ""]
    return "\n".join(lines)


def paper_comparison(result: dict) -> str | None:
    inception = next((st for st in result["stacks"] if st["name"] == "inception"), None)
    if not inception:
        return None
    best = None
    for precision, row in inception["precisions"].items():
        for t in row.get("throughput", []):
            if t["n"] == 300 and (best is None or t["ours_s"] / t["images"] < best[1]):
                best = (precision, t["ours_s"] / t["images"], t["reference_s"] / t["images"])
    if best is None:
        return None
    return (f"The paper certifies with 300 draws of its auto-encoder + Inception-v3 in {PAPER_CERTIFY_S} s per image on "
            f"its (2018) GPU. Here the same architecture takes {best[1]:.4f} s per image at n = 300 ({best[0]}, our "
            f"engine; {best[2]:.4f} s with the reference loop): {PAPER_CERTIFY_S / best[1]:.0f}x less than the paper's.")


def main(argv=None) -> dict:
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
    p.add_argument("--no-compare-cpu", dest="compare_cpu", action="store_false",
                   help="skip the CPU vs device vote comparison")
    p.add_argument("--natural-autoencoder", default=str(REPO / "pretrained" / "natural-ae-L0.1"))
    p.add_argument("--quick", action="store_true", help="reduced CPU mode for CI: n 10,20, batch 8, 1 image")
    p.add_argument("--quiet", action="store_true", help="no progress bars (they go to stderr; the log stays on stdout)")
    args = p.parse_args(argv)
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
        raise SystemExit(f"unknown precisions {sorted(unknown)} or --reps < 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    t_start = time.perf_counter()

    def log(msg):  # tqdm.write: the same line on stdout, with the bars on stderr moved out of its way
        bench.tqdm.write(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", file=sys.stdout)
        sys.stdout.flush()

    result = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO)] +
                                              list(sys.argv[1:] if argv is None else argv)),
              "machine": device_info(device), "quick": args.quick, "stacks": []}
    log(f"device: {result['machine'].get('gpu', device)}")
    for name in bench.progress(args.stacks.split(","), desc="gpu benchmark: stacks", unit="stack", leave=True):
        result["stacks"].append(run_stack(name, args, device, log))
    result["paper_comparison"] = paper_comparison(result)
    result["total_s"] = time.perf_counter() - t_start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    out.write_text(render(result))
    log(f"wrote {out} and {out.with_suffix('.json')}")
    return result


if __name__ == "__main__":
    main()
