"""Tiny policies and HTTP helpers for the policy and generator tests (test_policy_*, test_generator)."""

from __future__ import annotations

import json
import string
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cutalign.modelinit import build_char_tokenizer
from cutalign.policy.launcher import PolicyServerProcess

CORPUS = string.printable


def tiny_policy(directory: Path, seed: int = 0, context: int = 512) -> Path:
    """A random 2-layer Llama (hidden 32) with the project's character tokenizer, saved like a hub checkpoint.

    Untied input/output embeddings: with tied ones a random model's argmax mostly copies its last input
    character, and tests of stop sequences and EOS need varied output.
    """
    tokenizer = build_char_tokenizer(CORPUS, max_length=context)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def http_json(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, timeout_s: float = 30.0
) -> tuple[int, Any]:
    """(status, decoded JSON or raw text) of one request; raw bytes bodies are sent unchanged."""
    data = body if isinstance(body, bytes) else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


def admin_load(server: PolicyServerProcess, body: Any, token: str | None = None) -> tuple[int, Any]:
    """``POST /v1/policy/load`` with the server's admin token (or ``token``)."""
    auth = {"authorization": f"Bearer {token if token is not None else server.admin_token}"}
    return http_json("POST", f"{server.url}/v1/policy/load", body, auth)


def tiny_adapter(directory: Path, base: Path, seed: int = 0, base_uri: str | None = None) -> Path:
    """A random (non-zero) LoRA adapter over ``base``, saved as PEFT does; ``base_uri`` names its base."""
    from peft import LoraConfig, get_peft_model

    model = LlamaForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=2, lora_alpha=4, target_modules=["gate_proj", "up_proj", "down_proj"], init_lora_weights=False
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = get_peft_model(model, config)
    adapter.save_pretrained(directory)
    if base_uri is not None:
        path = directory / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "base_model_name_or_path": base_uri}))
    return directory
