"""Copy a trained checkpoint into pretrained/ without its optimizer state, with a model card,
and record every file's sha256 in pretrained/SHA256SUMS (checked when a shipped model loads).

    python tools/ship_checkpoint.py runs/natural-ae-L0.1 pretrained/natural-ae-L0.1 --card card.md
"""

import argparse
import json
import shutil
from pathlib import Path

from dp_autoencoder.checkpoint import CONFIG, atomic_write_bytes, atomic_write_json, read_config, sha256_file


def update_manifest(root: Path) -> None:
    lines = [f"{sha256_file(p)}  {p.relative_to(root).as_posix()}\n"
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != "SHA256SUMS"]
    atomic_write_bytes(root / "SHA256SUMS", "".join(lines).encode())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("--card", required=True, help="markdown model card to copy as MODEL_CARD.md")
    args = p.parse_args()
    src, dst = Path(args.source), Path(args.target)
    config = read_config(src)
    if dst.exists():
        raise SystemExit(f"{dst} exists; remove it first")
    dst.mkdir(parents=True)
    weights = config["files"]["weights"]
    shutil.copy2(src / weights["file"], dst / weights["file"])
    config["files"] = {"weights": weights}
    config.get("training", {}).pop("optimizer", None)
    atomic_write_json(dst / CONFIG, config)
    shutil.copy2(args.card, dst / "MODEL_CARD.md")
    update_manifest(dst.parent)
    print(json.dumps({"shipped": str(dst), "weights_sha256": weights["sha256"]}))


if __name__ == "__main__":
    main()
