"""Write a trained checkpoint as a folder ready to ship: config.json without the optimizer state, the
weights, the model card as MODEL_CARD.md, and a SHA256SUMS of them (dp_autoencoder.hub.write_release_folder).

    python tools/ship_checkpoint.py runs/natural-ae-L0.1 pretrained/natural-ae-L0.1 --card card.md
    python tools/ship_checkpoint.py runs/my-ae upload/my-ae --card card.md
    huggingface-cli upload ORG/my-ae upload/my-ae      # then: dpae certify --autoencoder hf-hub:ORG/my-ae

Into pretrained/, it also rewrites pretrained/SHA256SUMS (checked when a shipped model loads), and either
way it prints the registry fields the folder determines: a new shipped model is one entry in
dp_autoencoder/_registry.py (add its description, classifier, input size and the card's figures), which
tests/test_registry.py checks against the folder.
"""

import argparse
import json
import sys
from pathlib import Path

from dp_autoencoder._registry import fields_from_checkpoint
from dp_autoencoder.checkpoint import CheckpointError
from dp_autoencoder.hub import write_manifest, write_release_folder


def update_manifest(root: Path) -> None:
    """pretrained/SHA256SUMS: every file of every shipped folder."""
    write_manifest(root)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="the trained checkpoint folder (dpae train --out)")
    p.add_argument("target", help="the folder to write (must not exist)")
    p.add_argument("--card", required=True, help="markdown model card to copy as MODEL_CARD.md")
    args = p.parse_args()
    try:
        target = write_release_folder(args.source, args.target, args.card)
    except CheckpointError as e:
        print(f"ship_checkpoint: error: {e}", file=sys.stderr)
        return 2
    if (target.parent / "SHA256SUMS").is_file():  # pretrained/: the manifest of every shipped folder
        update_manifest(target.parent)
    fields = fields_from_checkpoint(target)
    print(json.dumps({"shipped": str(target), "registry_fields": {k: v for k, v in fields.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
