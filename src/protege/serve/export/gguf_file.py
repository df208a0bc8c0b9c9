"""Write a transformers causal LM as a GGUF file with the `gguf` package (llama.cpp's own Python
writer, tensor-name map and quantisers; llama.cpp's converter script is not on PyPI).

What llama.cpp's converter does for these architectures, and so what this does:
- tensor names from `gguf.get_tensor_name_map` (model.layers.0.self_attn.q_proj -> blk.0.attn_q);
- llama: q_proj and k_proj rows permuted into llama.cpp's rotary layout (transformers' reader undoes
  exactly this permutation);
- gemma3: every norm weight stored as 1 + w (Gemma's RMSNorm multiplies by 1 + w; llama.cpp by w);
- a tied output head is not written (its absence is how readers know it is tied);
- 1-D tensors (norms) stay float32; 2-D weights become F16, or Q8_0 where a row splits into 32-value
  blocks (else F16).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protege.errors import UserError

QUANTS = ("f16", "q8_0")


@dataclass(frozen=True)
class Arch:
    gguf_name: str
    """llama.cpp's architecture name (general.architecture)."""
    label: str
    norm_offset: float = 0.0
    permute_qk: bool = False


ARCHES = {
    "llama": Arch("llama", "llama (SmolLM2, Llama)", permute_qk=True),
    "gemma3_text": Arch("gemma3", "gemma3 (Gemma 3 text)", norm_offset=1.0),
}
SUPPORTED_ARCHES = ", ".join(a.label for a in ARCHES.values())


def check_quant(quant: str) -> str:
    q = quant.lower()
    if q not in QUANTS:
        raise UserError(f"--quant {quant!r}: supported: {', '.join(QUANTS)}")
    return q


def arch_of(config: Any) -> Arch:
    """The GGUF architecture for a transformers config, or a usage error naming those supported."""
    arch = ARCHES.get(getattr(config, "model_type", None))
    if arch is None:
        raise UserError(f"architecture {config.model_type!r}: GGUF export supports {SUPPORTED_ARCHES}")
    rope = _rope(config)
    if rope.get("rope_type", "default") != "default":
        raise UserError(f"rope scaling {rope.get('rope_type')!r}: GGUF export supports unscaled rope only")
    return arch


def _rope(config: Any) -> dict[str, Any]:
    """The full-attention rope parameters (transformers 5 nests them per layer type for Gemma 3)."""
    params = getattr(config, "rope_parameters", None) or {}
    if "full_attention" in params:
        params = params["full_attention"]
    if not params and getattr(config, "rope_theta", None):
        params = {"rope_theta": config.rope_theta}
    return dict(params)


def write_gguf(model: Any, tok: Any, path: Path, quant: str, name: str, end_of_turn: int | None = None) -> Path:
    """Write `model` (a float transformers causal LM) and `tok` to `path`; returns `path`."""
    import gguf

    from protege.serve.export.gguf_vocab import add_vocab, read_vocab

    quant = check_quant(quant)
    config = model.config
    arch = arch_of(config)
    state = {k: v for k, v in model.state_dict().items() if not _skipped(k, config)}
    n_vocab = state["model.embed_tokens.weight"].shape[0]
    vocab = read_vocab(tok, n_vocab, end_of_turn)  # refuses an unsupported tokenizer before writing
    writer = gguf.GGUFWriter(str(path), arch.gguf_name)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_hparams(writer, config, arch, n_vocab)
    add_vocab(writer, vocab)
    model_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch.gguf_name)
    names = gguf.get_tensor_name_map(model_arch, config.num_hidden_layers)
    for hf_name, tensor in state.items():
        stem, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(stem)
        if gguf_name is None:
            raise UserError(f"tensor {hf_name}: no GGUF name in {arch.gguf_name}; export supports the plain model")
        data = _transform(tensor.detach().float().cpu().numpy(), f"{gguf_name}.{suffix}", config, arch)
        data, qtype = _encode(data, quant)
        writer.add_tensor(f"{gguf_name}.{suffix}", data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _skipped(key: str, config: Any) -> bool:
    """Buffers (rotary tables) and a tied head are not tensors of the file."""
    return "rotary_emb" in key or (key == "lm_head.weight" and bool(getattr(config, "tie_word_embeddings", False)))


def _add_hparams(writer: Any, config: Any, arch: Arch, n_vocab: int) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_vocab_size(n_vocab)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(_rope(config).get("rope_theta", 10000.0)))
    if arch.gguf_name == "llama":
        writer.add_rope_dimension_count(head_dim)
    else:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_sliding_window(config.sliding_window)


def _transform(data: np.ndarray, gguf_name: str, config: Any, arch: Arch) -> np.ndarray:
    if arch.norm_offset and gguf_name.endswith("norm.weight"):
        return data + arch.norm_offset
    if arch.permute_qk and ".attn_q." in gguf_name:
        return _permute(data, config.num_attention_heads)
    if arch.permute_qk and ".attn_k." in gguf_name:
        return _permute(data, config.num_key_value_heads)
    return data


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout for q/k rows (convert_hf_to_gguf.py LlamaModel.permute)."""
    rows = weights.shape[0]
    return weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _encode(data: np.ndarray, quant: str) -> tuple[np.ndarray, Any]:
    """(array, raw ggml type or None): norms float32, weights F16 or Q8_0."""
    import gguf

    if data.ndim <= 1:
        return data.astype(np.float32), None
    if quant == "q8_0" and data.shape[-1] % 32 == 0:
        return gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0), (
            gguf.GGMLQuantizationType.Q8_0
        )
    return data.astype(np.float16), None
