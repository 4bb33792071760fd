# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Convert a TorchScript CLIP archive once into a plain state-dict file that loads without running code.

OpenAI released CLIP as TorchScript archives (``ViT-L-14-336px.pt``). Loading an archive runs code stored in it
(``torch.jit.load`` executes the scripted ``__setstate__`` methods), so BayesPFL loads a local archive only if it is
byte for byte one of OpenAI's releases (their SHA-256 digests are pinned by open_clip) or the environment sets
``TRUST_REMOTE_CODE=1``, anomalib's opt-in for pickled models. This command is the other way: it opens the archive
once and writes its weights with ``torch.save(state_dict)``, a file that ``torch.load(weights_only=True)`` reads and
that BayesPFL then accepts as ``pretrained`` with no opt-in.

Running the command on a file is the explicit consent to run that file's code this once, so it needs no
``TRUST_REMOTE_CODE``: convert only archives from a source you trust (such as OpenAI's published files).

The output keeps the archive's tensors and names unchanged (OpenAI's layout, including its ``input_resolution``,
``context_length`` and ``vocab_size`` entries, which mark the weights as OpenAI's so ``activation="auto"`` keeps
QuickGELU) and their dtype (fp16 for OpenAI's files; BayesPFL reads weights in fp32).

Command line::

    python -m anomalib_bayes_pfl.convert_clip ViT-L-14-336px.pt ViT-L-14-336px-state-dict.pt
    anomalib train --model anomalib_bayes_pfl.BayesPFL --model.pretrained ViT-L-14-336px-state-dict.pt ...

Example:
    >>> from anomalib_bayes_pfl.convert_clip import convert_archive
    >>> convert_archive("ViT-L-14-336px.pt", "ViT-L-14-336px-state-dict.pt")  # doctest: +SKIP
    PosixPath('ViT-L-14-336px-state-dict.pt')
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import torch

from .atomic import atomic_write
from .backbone import _is_torchscript_archive, read_torchscript_archive


class ConversionError(ValueError):
    """The input is not an archive to convert, or the output cannot be written."""


def convert_archive(archive: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False) -> Path:
    """Load a TorchScript archive (this RUNS ITS CODE, once) and save its state dict as a plain weights file.

    Args:
        archive (str | os.PathLike): The TorchScript archive, e.g. OpenAI's ``ViT-L-14-336px.pt``.
        output (str | os.PathLike): Where to write the state dict (folders are created).
        overwrite (bool): Replace an existing ``output``. Defaults to ``False``.

    Returns:
        Path: ``output``, which loads with ``torch.load(weights_only=True)``.

    Raises:
        ConversionError: If ``archive`` is missing or not a TorchScript archive, ``output`` is the archive itself,
            or ``output`` exists and ``overwrite`` is false.
    """
    archive, output = Path(archive).expanduser(), Path(output).expanduser()
    if not archive.is_file():
        msg = f"Archive not found: {archive}."
        raise ConversionError(msg)
    if not _is_torchscript_archive(archive):
        msg = (
            f"{archive} is not a TorchScript archive: it needs no conversion. Pass it as pretrained directly; it is "
            "read with torch.load(weights_only=True)."
        )
        raise ConversionError(msg)
    if output.exists() and output.resolve() == archive.resolve():
        msg = f"The output {output} is the archive itself; choose another file name."
        raise ConversionError(msg)
    if output.exists() and not overwrite:
        msg = f"{output} exists; choose another file name or pass --overwrite."
        raise ConversionError(msg)
    state_dict = {key: value.detach().clone() for key, value in read_torchscript_archive(archive).items()}
    return atomic_write(output, functools.partial(_save_checked, state_dict))


def _save_checked(state_dict: dict[str, torch.Tensor], file: BinaryIO) -> None:
    """Save, then load the bytes back as BayesPFL will (``weights_only``) before they replace anything."""
    torch.save(state_dict, file)
    file.flush()
    torch.load(file.name, map_location="cpu", weights_only=True, mmap=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m anomalib_bayes_pfl.convert_clip",
        description=(
            "Convert a TorchScript CLIP archive (e.g. OpenAI's ViT-L-14-336px.pt) once into a state-dict file that "
            "loads with torch.load(weights_only=True), so BayesPFL accepts it as pretrained without "
            "TRUST_REMOTE_CODE. Loading the archive runs code stored in it: running this command on a file is your "
            "consent to that, once. Convert only files from a source you trust."
        ),
    )
    parser.add_argument("archive", type=Path, help="TorchScript archive to convert")
    parser.add_argument("output", type=Path, help="state-dict file to write (e.g. ViT-L-14-336px-state-dict.pt)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 on success, 2 on a refused input)."""
    arguments = _parser().parse_args(argv)
    try:
        output = convert_archive(arguments.archive, arguments.output, overwrite=arguments.overwrite)
    except ConversionError as error:
        print(f"convert_clip: {error}", file=sys.stderr)
        return 2
    print(
        f"Wrote the weights of {arguments.archive} to {output}. Use it as pretrained: "
        f"--model.pretrained {output} (BayesPFL(pretrained='{output}')); it loads without TRUST_REMOTE_CODE."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
