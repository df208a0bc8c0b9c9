"""White-box distillation: the student matches a local teacher's next-token distribution.

loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, data), on the answer
tokens only (the same gathered positions as the plain loss, so the teacher's head is also computed
only there). The teacher must share the student's tokenizer (checked token by token); its vocabulary head may be
wider (padded) and is cut to the student's size.
"""

from __future__ import annotations

from typing import Any

from protege.errors import UserError


def load_teacher(name: str, precision: Any, student_tok: Any, student_vocab: int) -> Any:
    """The frozen teacher, loaded in the run's weight dtype, after checking it shares the student's
    tokenizer: the KL compares the two next-token distributions id by id, so a teacher whose ids mean
    other tokens (a Gemma teacher for a SmolLM student, say) would train on noise without an error."""
    from protege.models.load import load_model, load_tokenizer
    from protege.models.precision import dtype_name

    require_same_tokenizer(name, load_tokenizer(name), student_tok)
    teacher = load_model(name, dtype=dtype_name(precision.weights))
    teacher.requires_grad_(False)
    vocab = teacher.get_output_embeddings().weight.shape[0]
    if vocab < student_vocab:
        raise UserError(f"teacher {name}: its head has {vocab} outputs, fewer than the student's {student_vocab}")
    return teacher


def require_same_tokenizer(name: str, teacher_tok: Any, student_tok: Any) -> None:
    """Every student token must have the same id in the teacher's vocabulary (a teacher head padded
    beyond the student's vocabulary is fine: kd_loss_sum cuts it)."""
    teacher_vocab, student_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    differ = [t for t, i in student_vocab.items() if teacher_vocab.get(t) != i]
    if differ:
        shown = ", ".join(repr(t) for t in sorted(differ)[:3])
        raise UserError(
            f"teacher {name}: its tokenizer differs from the student's ({len(differ)} of {len(student_vocab)} "
            f"tokens have another id or are missing, e.g. {shown}); kd needs the same tokenizer"
        )


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
