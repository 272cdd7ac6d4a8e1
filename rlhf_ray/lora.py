"""LoRA adapters (peft) for the learners: wrapping a model, and reading it back as plain HF weights.

With `model.lora` set, every learner trains low-rank adapters on its frozen base model (and a value model's score
head, which has no base to keep). What leaves a learner is always plain HF weights under HF names: the base
weights with each adapter merged in (W + alpha/r · B A), computed on copies, so the trained model itself is never
merged and unmerged (which would add float rounding to the frozen base at every sync). vLLM loads those like any
update; `save` writes them as the stage's HF folder and the adapters alone in its `adapter/` folder.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

ADAPTER = "default"  # peft's name for the one adapter we add


def wrap(model: torch.nn.Module, lora, kind: str) -> torch.nn.Module:
    """`model` with LoRA adapters (config.LoraConfig `lora`) on its `target_modules`; a value model (`critic`,
    `reward`) also trains its score head in full. Only adapter (and head) parameters keep requires_grad."""
    import peft

    config = peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules) if lora.target_modules != ["all-linear"]
                             else "all-linear",
                             task_type="CAUSAL_LM" if kind == "policy" else "SEQ_CLS")
    return peft.get_peft_model(model, config)


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def hf_name(name: str) -> Optional[str]:
    """The HF name of a parameter of a peft-wrapped model; None for adapter weights and the frozen copy of a
    fully trained module (`original_module`), which have no place in the merged model."""
    if ".lora_" in name or ".original_module." in name:
        return None
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".").replace(f".modules_to_save.{ADAPTER}.", ".")


def export_plan(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter, list[torch.nn.Parameter], object]]:
    """(HF name, parameter, the parameters to gather with it, the LoRA layer whose delta it takes or None) for every
    parameter of the merged model, in module order. Plain models: each parameter alone, under its own name."""
    if not is_lora(module):
        return [(n, p, [p], None) for n, p in module.named_parameters()]
    from peft.tuners.lora import LoraLayer

    layers = {name: m for name, m in module.named_modules() if isinstance(m, LoraLayer)}
    out = []
    for name, p in module.named_parameters():
        hf = hf_name(name)
        if hf is None:
            continue
        owner = layers.get(name.rsplit(".base_layer.", 1)[0]) if ".base_layer." in name else None
        if owner is not None and name.endswith(".weight") and ADAPTER in owner.lora_A:
            out.append((hf, p, [p, owner.lora_A[ADAPTER].weight, owner.lora_B[ADAPTER].weight], owner))
        else:
            out.append((hf, p, [p], None))
    return out


def merged(param: torch.Tensor, layer) -> torch.Tensor:
    """The merged weight W + ΔW of a LoRA layer's base weight (a new tensor), or `param` itself without one."""
    return param if layer is None else param + layer.get_delta_weight(ADAPTER).to(param.dtype)


def missing_targets(model_path: str, lora, trust_remote_code: bool = False) -> list[str]:
    """Names in `lora.target_modules` that match no module of the model (checked on the meta device, before
    anything loads); `all-linear` always matches."""
    from rlhf_ray import models

    targets = [t for t in lora.target_modules if t != "all-linear"]
    if not targets:
        return []
    leaves = {name.rsplit(".", 1)[-1] for name, _ in models.meta_model(model_path, trust_remote_code).named_modules()}
    return [t for t in targets if t not in leaves]


def adapter_plan(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(name in peft's adapter file, parameter) of every adapter weight, in module order: what `sync: adapters`
    pushes (`...q_proj.lora_A.weight`: the adapter's name dropped, as peft saves it)."""
    return [(name.replace(f".{ADAPTER}.", "."), p) for name, p in module.named_parameters()
            if ".lora_A." in name or ".lora_B." in name]


def write_adapter(folder, named: list[tuple[str, torch.Tensor]], lora) -> None:
    """An adapter folder in peft's format (adapter_config.json, adapter_model.safetensors) that vLLM loads, from
    pushed adapter weights. Its target modules are those the weights adapt ("all-linear" resolved)."""
    import peft
    from safetensors.torch import save_file

    targets = sorted({name.split(".lora_")[0].rsplit(".", 1)[-1] for name, _ in named})
    peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=targets,
                    task_type="CAUSAL_LM").save_pretrained(str(folder))
    save_file({name: t.contiguous() for name, t in named}, str(folder) + "/adapter_model.safetensors")
