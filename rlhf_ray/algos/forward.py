"""Forward passes as pure torch functions of a model: the one helper per quantity that every learner, scorer and
loss calls (log-probs of response tokens, per-token values, sequence rewards, the SFT loss), and `Loss`, the
contract that makes a loss add up exactly over micro-batches and ranks (see `engines.ds_engine`).

`model` is a DeepSpeed engine or a plain HF model: always called through its own forward, never past it to a
submodule, so that DeepSpeed's backward hooks see every training forward. Position ids count real tokens only,
so left and right padding give the same outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from rlhf_ray.algos import rl_math

Tensor = torch.Tensor
Batch = dict[str, Tensor]  # every tensor (B, ...) along dim 0: input_ids (B, T), attention_mask (B, T), ...


# ---------------------------------------------------------------- losses


@dataclass(frozen=True)
class Loss:
    """A loss that adds up exactly over micro-batches and ranks.

    fn(model, micro_batch, n_global) -> (loss, metrics): `loss` is this micro-batch's *share* of the full-batch
    loss, i.e. normalised by `n_global`, the count of the whole global batch; `metrics` are floats normalised the
    same way (they are summed over micro-batches and ranks). `model` is the DeepSpeed engine (or a plain HF model
    in single-process use): call it, don't reach past it to submodules (see the module docstring).
    count(micro_batch) -> float: this micro-batch's part of `n_global` (its tokens or sequences).

    Both must be module-level functions so the Loss pickles by reference into Ray actors.
    """

    fn: Callable[[Any, Batch, float], tuple[Tensor, dict[str, float]]]
    count: Callable[[Batch], float]


def _position_ids(attention_mask: Tensor) -> Tensor:
    """Positions counting real tokens only, so left and right padding give the same outputs. (B, T) -> (B, T)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def without_left_padding(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the leading columns that are padding in every row (a left-padded batch of shorter prompts): they cost
    a forward's compute and change no output (positions count real tokens). The last columns stay in place."""
    real = attention_mask.any(0).nonzero()
    start = int(real[0]) if len(real) else 0
    return input_ids[:, start:], attention_mask[:, start:]


def _sft_target_mask(mb: Batch) -> Tensor:
    """(B, T-1): 1 where token t+1 is a trained target (loss_mask and attention_mask both set)."""
    return (mb["loss_mask"][:, 1:] * mb["attention_mask"][:, 1:]).float()


def sft_nll(model, mb: Batch, n_global: float) -> tuple[Tensor, dict[str, float]]:
    """Token-level NLL of the targets, summed and divided by the global target count.

    mb: input_ids (B, T) long, attention_mask (B, T), loss_mask (B, T): 1 on tokens to predict (the response)."""
    logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"],
                   position_ids=_position_ids(mb["attention_mask"])).logits  # (B, T, V)
    logp = rl_math.logprobs_from_logits(logits[:, :-1], mb["input_ids"][:, 1:])  # (B, T-1): log p(x_{t+1} | x_≤t)
    loss = rl_math.token_mean(-logp, _sft_target_mask(mb), n_global)
    return loss, {}


def sft_count(mb: Batch) -> float:
    return float(_sft_target_mask(mb).sum())


SFT_LOSS = Loss(sft_nll, sft_count)


# ---------------------------------------------------------------- forward passes


def response_logits(model, input_ids: Tensor, attention_mask: Tensor, response_len: int,
                    temperature: float = 1.0) -> Tensor:
    """The logits that predict each of the last `response_len` tokens of each row, divided by the sampling
    temperature: (B, response_len, V). At T != 1 the generators sample from softmax(z / T), so that is the policy
    whose log-probs, ratio, KL and entropy the losses need (as TRL, OpenRLHF and verl divide); at T = 1 the
    logits are returned untouched (bit for bit what they were before temperature was an argument).

    Layout of `rollout.RolloutBatch`: response token t sits at column P + t, predicted from column P + t - 1.
    `model` is an engine or a plain causal LM; under ZeRO-3 every rank must call this together."""
    input_ids, attention_mask = without_left_padding(input_ids, attention_mask)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=_position_ids(attention_mask),
                   logits_to_keep=response_len + 1).logits  # (B, response_len + 1, V)
    logits = _last_positions(logits, response_len + 1)[:, :-1]
    if temperature != 1.0:
        logits = logits.float() / temperature  # in float32, as vLLM's sampler divides
    return logits


def _last_positions(logits: Tensor, keep: int) -> Tensor:
    """The last `keep` positions of `logits` (B, L, V). A model that ignores `logits_to_keep` returns every
    position: the last `keep` are the ones asked for (TRL slices the same way). Reading the first ones instead
    would shift every log-prob by the prompt's length with no error."""
    if logits.shape[1] < keep:
        raise ValueError(f"the model returned logits for {logits.shape[1]} positions, fewer than the {keep} asked "
                         f"for with logits_to_keep: the response log-probs cannot be aligned")
    return logits[:, -keep:]


def logprobs(model, input_ids: Tensor, attention_mask: Tensor, response_len: int, temperature: float = 1.0
             ) -> Tensor:
    """log p of the last `response_len` tokens of each row at sampling temperature `temperature`, float32
    (B, response_len) (see response_logits)."""
    logits = response_logits(model, input_ids, attention_mask, response_len, temperature)
    return rl_math.logprobs_from_logits(logits, input_ids[:, -response_len:])


def token_values(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Per-token values (B, T), float32: a decoder sequence classifier's `score` head at every position, through
    the model's (or engine's) own forward so DeepSpeed's backward hooks see it."""
    if getattr(model, "score", None) is None:
        raise ValueError(
            f"{type(model).__name__} has no per-position head (an encoder such as BERT pools its [CLS] token), "
            "so it gives no per-token values: a critic needs a decoder backbone (e.g. tiny, smollm2-135m-instruct)"
        )
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=_position_ids(attention_mask),
                output_hidden_states=True)
    return model.score(out.hidden_states[-1]).squeeze(-1).float()  # hidden_states[-1]: after the final norm


def values(model, input_ids: Tensor, attention_mask: Tensor, response_len: int) -> Tensor:
    """V(s_t) for the last `response_len` tokens (B, response_len): the value of the state *before* response
    token t, i.e. read at column P + t - 1 (the same columns `logprobs` reads its logits from)."""
    return token_values(model, *without_left_padding(input_ids, attention_mask))[:, -response_len - 1 : -1]


def sequence_rewards(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(B,) reward of each right-padded sequence, float32, through the model's (or engine's) own forward: a
    decoder's `score` head at the last real token, or an encoder's pooled logit."""
    if getattr(model, "score", None) is None:  # BERT-style: the head pools [CLS]; absolute positions, right padding
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
    per_token = token_values(model, input_ids, attention_mask)  # (B, T)
    return per_token.gather(-1, rl_math.last_token_index(attention_mask)[:, None]).squeeze(-1)
