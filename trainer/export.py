"""Take the encoder away: a pretraining checkpoint's encoder, without the projection head, in a
format a downstream user loads without this project installed.

    python -m trainer.export CHECKPOINT --format safetensors|torchvision|torchscript -o FILE

- ``safetensors``: the encoder's tensors in fp32 (``safetensors.torch.load_file``), a ResNet's
  keyed as torchvision names them (the small CNN's as this project does); the metadata holds the pretraining config (``simclr_config``, JSON) and,
  for a ResNet, ``torchvision`` (below).
- ``torchvision``: a state dict (``torch.save``, loadable with ``weights_only=True``) that the
  backbone's torchvision constructor (``torchvision.models.resnet50()``, ...) loads with only
  ``fc.weight`` and ``fc.bias`` missing (``strict=False``). A CIFAR-stem backbone needs that
  model's ``conv1`` replaced by a 3x3 stride-1 convolution and its max-pool removed first:
  ``torchvision_recipe`` says so, and the model card carries it.
- ``torchscript``: the encoder scripted (``torch.jit.load(FILE)(images)`` gives the features).

The small CNN has no torchvision counterpart: it exports to safetensors and TorchScript only, and
a ``torchvision`` request for it is refused with that said. Every format is written under a
temporary name and renamed, so a reader never sees half a file. A format the backbone lacks ends
the process with status 2 and one line on standard error, ``error: ...`` (this module's own
words, which the service passes on); a checkpoint that does not load ends it with status 3 (its
reason may quote the file, so the service says only that it does not load).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from trainer.contracts.config import torchvision_recipe
from trainer.linear_probe import load_encoder

FORMATS = ("safetensors", "torchvision", "torchscript")


class UnsupportedFormat(Exception):
    """A format this backbone has no counterpart in (torchvision for the small CNN)."""


def export(checkpoint: str | Path, format: str, output: str | Path) -> Path:
    """Write the encoder of ``checkpoint`` (a checkpoint directory or its ``state.pt``) to
    ``output`` in ``format``; raises ``UnsupportedFormat`` (a format the backbone lacks),
    ``CheckpointError`` or another ``ValueError`` (a checkpoint that does not load), each saying
    what is wrong."""
    if format not in FORMATS:
        raise ValueError(f"format {format!r}: expected one of {', '.join(FORMATS)}")
    encoder, config = load_encoder(checkpoint)
    output = Path(output)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    state = {name: tensor.contiguous() for name, tensor in encoder.state_dict().items()}
    try:
        if format == "safetensors":
            from safetensors.torch import save_file

            metadata = {"simclr_config": config.model_dump_json(), "format": "simclr-encoder"}
            if (recipe := torchvision_recipe(config)) is not None:
                metadata["torchvision"] = json.dumps(recipe)
                # torchvision's names, as the recipe loads them
                state = {name.removeprefix("net."): t for name, t in state.items()}
            save_file(state, str(temporary), metadata=metadata)
        elif format == "torchvision":
            if torchvision_recipe(config) is None:
                raise UnsupportedFormat(
                    f"a {config.backbone.name} encoder has no torchvision counterpart: "
                    "export it as safetensors or torchscript"
                )
            torch.save({name.removeprefix("net."): t for name, t in state.items()}, temporary)
        else:
            torch.jit.save(torch.jit.script(encoder), str(temporary))
        temporary.replace(output)
    finally:
        temporary.unlink(missing_ok=True)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a checkpoint's encoder.")
    parser.add_argument("checkpoint", help="a checkpoint directory or its state.pt")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    try:
        export(args.checkpoint, args.format, args.output)
    except UnsupportedFormat as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as error:  # CheckpointError, or a stored config today's model refuses
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(3) from None


if __name__ == "__main__":
    main()
