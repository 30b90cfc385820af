"""What verify must know about MindFormers' Llama, which every mapping table writes today.

These are facts of the model class, not of one checkpoint: the kernel and dtype settings under which
it runs on CPU, the config keys that make two checkpoints different models, and those that change
what a model computes. They belong with the tables, and move there when the table loader can carry
them; until then they live here, in one place, and nowhere else.
"""
from __future__ import annotations

# MindSpore's CPU build has no flash attention, no fused RMSNorm and no half-precision kernels.
CPU_KERNELS = {"use_flash_attention": False, "fused_rms_norm": False, "use_rope_slice": True}
FLOAT32_COMPUTE = {k: "float32" for k in ("compute_dtype", "param_init_type", "layernorm_compute_type",
                                          "softmax_compute_type", "rotary_dtype", "embedding_init_type")}

# The model_config keys that make two checkpoints different models.
STRUCTURAL = ("hidden_size", "num_layers", "num_heads", "n_kv_heads", "vocab_size", "intermediate_size",
              "tie_word_embeddings", "qkv_has_bias", "attn_proj_has_bias")

# The model_config keys, besides the structural ones, that change what the model computes. Kernel,
# dtype, parallelism, batch and generation settings are deliberately absent: they are choices of how
# to run the model, and verify runs both sides its own way (float32, plain kernels).
FORWARD_KEYS = ("theta", "rms_norm_eps", "extend_method", "scaling_factor", "max_position_embedding",
                "pad_token_id", "multiple_of", "ffn_dim_multiplier", "hidden_act", "head_dim", "rope_scaling")
