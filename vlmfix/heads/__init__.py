"""*Which* tokens and heads each method acts on: pure functions of tensors, tested against the papers' formulas."""

from .carve import (attention_entropy, contrast, fuse_maps, refine_image, select_regions, step_weights,
                    top_p_mask)
from .dual_stream import (avg_pool_scores, cls_attention, local_tokens, pixel_shuffle_scores, pool_scores,
                          received_attention, select_streams, summary_tokens)
from .sinks import (KNOWN_SINK_DIMS, SinkBitWriter, SinkDimsReport, detect_sinks, find_sink_dims, known_sink_dims,
                    sink_dims_from_hidden_states, sink_scores)
from .vhr import head_divergence, select_heads, suppress_outliers, text_norm_sq

__all__ = [
    "KNOWN_SINK_DIMS", "SinkDimsReport", "known_sink_dims", "sink_scores", "detect_sinks", "find_sink_dims",
    "sink_dims_from_hidden_states", "SinkBitWriter",
    "head_divergence", "text_norm_sq", "suppress_outliers", "select_heads",
    "local_tokens", "summary_tokens", "select_streams", "cls_attention", "received_attention", "pool_scores",
    "avg_pool_scores", "pixel_shuffle_scores",
    "contrast", "step_weights", "fuse_maps", "top_p_mask", "select_regions", "refine_image", "attention_entropy",
]
