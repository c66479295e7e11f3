"""The partition rules: one table from logical axes to mesh axes (as jax-llm-examples' ShardingRules and
MaxText's logical axis rules). Logical axes are named where each array is declared: the target's weights in
models/llama.weight_info, the KV cache in cache.KVCache.AXES, a drafter's state in its state_axes; an axis
missing from the table is never split. specjax.program.sharded turns the two into shardings.

Megatron-style tensor parallelism over "model": attention by KV-head group (wqkv's K axis, wo's rows,
bqkv), the FFN by columns (w_gate_up's F axis, w_down's rows), the vocabulary of the embedding and the LM
head. The KV cache splits batch over "data" and KV heads over "model"; engine arrays (prompts, tokens,
lengths) batch over "data"; drafter parameters are replicated (the largest, Medusa's heads, is 2.7 MB).

A logical axis whose size the mesh axis does not divide is REPLICATED rather than padded: SmolLM2's 3 KV
heads on model=2 or 4 keep all attention weights (wqkv, wo: about 26M of its 135M parameters) and the
KV cache whole on every model shard, and every shard computes all of attention; the FFN and vocabulary,
which divide, are still split. Padding to 4 KV heads would instead cost a third more attention compute
and cache everywhere and zero heads to carry; replication keeps the arithmetic of each head unchanged.
"""
RULES = {"batch": "data", "vocab": "model", "kv_heads": "model", "ffn": "model"}
