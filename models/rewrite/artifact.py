"""The rewrite model's artifact: merged weights as safetensors, the tokenizer, and
``rewriter.json`` (what the model is and what it was trained on), in one folder.

A model de-quantized from SmolLM2's GGUF file still carries transformers' GGUF quantizer
(``hf_quantizer``, ``config.quantization_config``, ``is_quantized``); saved with them, the
folder would claim to be GGUF-quantized and would not load as the plain float model it is,
so :func:`save_rewriter` drops them first (DESIGN.md, LLM).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from models.rewrite.llm import SMOLLM2_NAME, _transformers

#: The metadata file of a rewriter folder.
METADATA = "rewriter.json"
#: The weights file transformers writes for a model of SmolLM2's size (one shard).
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "item"):  # numpy and torch scalars
        return _json_ready(value.item())
    return str(value)


def _drop_gguf_quantizer(model: Any) -> None:
    """The attributes transformers leaves on a model it de-quantized from GGUF: the weights
    are plain floats, and saved with these the folder would claim otherwise."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if getattr(model, "is_quantized", False):
        model.is_quantized = False


def save_rewriter(model: Any, tokenizer: Any, out_dir: str | Path,
                  metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a plain causal LM: LoRA already merged, e.g. by
    :func:`models.rewrite.sft.fit_sft`) and ``tokenizer`` to ``out_dir`` and return it.

    Weights go to ``model.safetensors``, the tokenizer beside them, and ``rewriter.json``
    holds ``format_version``, ``name`` (default ``"smollm2-sft"``), ``base`` (default
    SmolLM2-135M-Instruct), ``steps`` and ``pairs`` (from the model's ``sft_info_`` when
    :func:`fit_sft` made it, else null), ``created`` (UTC, ISO 8601), then every entry of
    ``metadata``, which overrides those defaults (e.g. the training data's time range).
    A model loaded from GGUF loses its quantizer attributes first (see the module doc).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir={str(out)!r} exists and is not a folder")
    if hasattr(model, "get_base_model") or hasattr(model, "peft_config"):
        raise TypeError("model still has LoRA adapters: merge them first "
                        "(peft's merge_and_unload, as fit_sft does)")
    _drop_gguf_quantizer(model)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # safetensors: transformers writes no other format
    if not (out / WEIGHTS).is_file():
        raise RuntimeError(f"{out} has no {WEIGHTS} after saving: a sharded or non-"
                           "safetensors save is not a rewriter artifact")
    tokenizer.save_pretrained(out)
    info = dict(getattr(model, "sft_info_", None) or {})
    record: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "name": "smollm2-sft", "base": SMOLLM2_NAME,
        "steps": info.get("steps"), "pairs": info.get("pairs"),
        "created": datetime.now(UTC).isoformat(timespec="seconds")}
    if info:
        record["training"] = info
    record.update(metadata or {})
    # Temp file + rename: a reader never sees half a metadata file.
    tmp = out / (METADATA + ".tmp")
    tmp.write_text(json.dumps(_json_ready(record), indent=2, sort_keys=True) + "\n")
    tmp.replace(out / METADATA)
    return out


def load_rewriter(directory: str | Path, *, device: str | torch.device | None = None
                  ) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, tokenizer, metadata)`` from a folder of :func:`save_rewriter`: the model in
    float32 and eval mode (on ``device``, default the CPU), the tokenizer padding on the
    left for generation. Reads local files only (safetensors, never pickle). A missing
    folder or file, or one that does not parse, raises an error naming the path and what is
    wrong."""
    folder = Path(directory)
    if not folder.is_dir():
        raise FileNotFoundError(f"rewriter folder {str(folder)!r} does not exist")
    missing = [name for name in (METADATA, WEIGHTS, "config.json") if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        missing.append("tokenizer.json")
    if missing:
        raise FileNotFoundError(f"rewriter folder {str(folder)!r} is missing "
                                f"{', '.join(missing)} (write it with save_rewriter)")
    try:
        metadata = json.loads((folder / METADATA).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{folder / METADATA} is not valid JSON: {error}") from error
    if not isinstance(metadata, dict):
        raise ValueError(f"{folder / METADATA} must hold a JSON object, not "
                         f"{type(metadata).__name__}")
    transformers = _transformers()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, local_files_only=True, use_safetensors=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as error:  # safetensors, tokenizers and json each raise their own
        raise ValueError(f"rewriter folder {str(folder)!r} does not load: "
                         f"{type(error).__name__}: {error}") from error
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer, metadata
