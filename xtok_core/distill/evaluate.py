"""Did the student learn the numerals? Greedy exact match on held-out additions.

A prompt such as "123 + 456 =" is correct when the greedy continuation, cut at the first newline,
is exactly the answer " 579" (leading space included, nothing after it). The prompts come from
`xtok_core.corpus.arithmetic_eval_set` and never occur in the training corpus.
"""

from __future__ import annotations

import torch

from ..corpus import arithmetic_eval_set
from ..tok import Tok
from .data import encode_padded
from .models import pad_id


@torch.no_grad()
def arithmetic_accuracy(model: torch.nn.Module, tok: Tok, *, n: int = 64, seed: int = 1234, batch_size: int = 32,
                        device="cpu", max_new_tokens: int | None = None) -> dict:
    """{"accuracy": fraction correct, "n": prompts, "examples": first 3 (prompt, answer, output)}."""
    pairs = arithmetic_eval_set(n, seed)
    # enough tokens for the longest answer digit by digit, plus the newline that ends it
    max_new = max_new_tokens or max(len(a) for _, a in pairs) + 2
    was_training = model.training
    model.eval()
    correct, examples = 0, []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        ids, mask = encode_padded(tok, [p for p, _ in chunk], 64, left=True)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.long().to(device), max_new_tokens=max_new,
                             do_sample=False, pad_token_id=pad_id(tok), eos_token_id=tok.roles.get("eos"))
        for (prompt, answer), row in zip(chunk, out[:, ids.shape[1]:].tolist()):
            text = tok.decode(row, skip_special_tokens=True).split("\n", 1)[0]
            correct += text == answer
            if len(examples) < 3:
                examples.append((prompt, answer, text))
    model.train(was_training)
    return {"accuracy": correct / len(pairs), "n": len(pairs), "examples": examples}
