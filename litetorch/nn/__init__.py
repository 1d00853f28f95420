"""litetorch.nn: modules and layers (torch.nn's names)."""
from ..tensor import Parameter
from . import functional
from .activation import GELU, Dropout, Identity, ReLU, Sigmoid, SiLU, Softmax, Tanh
from .embedding import Embedding
from .linear import Linear
from .module import Module, ModuleDict, ModuleList, Sequential, join_fused_names, split_fused_names
from .norm import LayerNorm, RMSNorm, RMSNormGated, ZeroCenteredRMSNorm
from .sdpa import causal_mask, scaled_dot_product_attention
from .rope import RotaryEmbedding, apply_rope, permute_qk_to_interleaved, unpermute_qk
from .positional import SinusoidalPositionalEncoding, sinusoidal_positional_encoding
from .kv_cache import CacheSnapshot, KVCache, LayerCaches, make_caches
from .attention import MultiHeadAttention, repeat_kv
from .ffn import MLP, SwiGLU
from .block import DecoderBlock
from .gated_deltanet import CausalConv1d, DeltaNetCache, DeltaNetSnapshot, GatedDeltaNet
from .moe import Experts, SparseMoeBlock, TopKRouter, load_balancing_loss, routing_matrix, tokens_per_expert
from .gated_attention import gate_attention_output, split_query_and_gate
from .doubly_stochastic import permutation_matrices, sinkhorn_knopp
from .hyper import (FirstOutput, HCMapping, HyperConnection, MHCLiteMapping, MHCMapping, amax_gain, expand_streams,
                    make_mapping, reduce_streams)
