"""White-box distillation: the student matches a local teacher's next-token distribution.

loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, data), on the answer
tokens only (the same gathered positions as the plain loss, so the teacher's head is also computed
only there). The teacher must share the student's tokenizer; its vocabulary head may be wider
(padded) and is cut to the student's size.
"""

from __future__ import annotations

from typing import Any

from protege.errors import UserError


def load_teacher(name: str, dtype: str, student_vocab: int) -> Any:
    from protege.models.load import load_model

    teacher = load_model(name, dtype=dtype)
    teacher.requires_grad_(False)
    vocab = teacher.get_output_embeddings().weight.shape[0]
    if vocab < student_vocab:
        raise UserError(
            f"teacher {name}: vocabulary {vocab} < the student's {student_vocab}; kd needs a shared tokenizer"
        )
    return teacher


def kd_loss_sum(student_logits: Any, teacher_logits: Any, targets: Any, temperature: float, alpha: float) -> Any:
    """Summed (not averaged) over target positions, so the caller normalises across processes."""
    import torch.nn.functional as F

    vocab = student_logits.shape[-1]
    t = temperature
    s_log = F.log_softmax(student_logits.float() / t, dim=-1)
    t_log = F.log_softmax(teacher_logits[..., :vocab].float() / t, dim=-1)
    kl = F.kl_div(s_log, t_log, log_target=True, reduction="sum") * (t * t)
    ce = F.cross_entropy(student_logits.float(), targets, reduction="sum")
    return alpha * kl + (1 - alpha) * ce
