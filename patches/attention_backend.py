"""Attention backend `npr_triton` (opt-in: `--attention-backend npr_triton`), SGLang 0.5.23.

Hook: `sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new` (AFTER)
tags each decode ForwardBatch with its rows' sibling info (`npr_rows`, from `req.npr`;
None when no row is a branch, or when this process built no `npr_triton` backend). The
positions hook wraps the same target; the two set different fields, so their order does
not matter.

Hook: `sglang.srt.model_executor.runner.eager_runner.EagerRunner.load_batch` (AFTER)
carries `npr_rows` into the ForwardBatch the eager runner actually runs: load_batch
returns a copy (`dataclasses.replace` over its static buffers) that keeps declared
fields only, so without this the backend never saw a sibling row.

Hook: `sglang.srt.model_executor.runner.decode_cuda_graph_runner.build_replay_fb_view`
(AFTER) carries `npr_rows` into the view a CUDA-graph replay prepares its metadata from,
and counts the replays (`graph_replays`, whatever the backend).

`ROUTED` counts what this process sent to the shared-prefix kernel; patches/internal_state.py
serves it as `npr_attn_routed`, so an end-to-end check (benchmarks/gpu_e2e.py) can prove
the kernel ran.

Registration (at import, i.e. at plugin load, before SGLang parses its CLI): the name
goes into `sglang.srt.arg_groups.choices.ATTENTION_BACKEND_CHOICES` and
`sglang.srt.layers.attention.attention_registry.ATTENTION_BACKENDS`. Nothing from the
Triton backend or our kernels is imported until SGLang builds the backend on GPU.

The backend is SGLang's TritonAttnBackend except decode steps whose batch holds a
sibling group (npr_engine.attn_routing): those read each shared prefix once through
npr_engine.kernels.shared_prefix_decode. Under CUDA graphs every plain layer's decode
is captured as the shared-prefix launch over a plan in fixed buffers
(attn_routing.GraphRouting, kernels/graph_plan.py), refilled before each replay; a step
with no sibling group gets the per-sequence result from it (`graph_steps` counts the
replays that held a group). NOT RUN ON A GPU YET: tested on CPU under the Triton
interpreter with a simulated capture and padded replays only. Speculative decoding,
sliding windows, logit caps, sinks, scaled (fp8) KV and a metadata glue graph stay on
the Triton path.
Opt-in: the first end-to-end GPU run (H100, benchmarks/gpu_e2e.sh) gave triton's tokens
in float32 but not in bfloat16 (benchmarks/KERNELS_NOTES.md).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from npr_engine.attn_routing import rows_from_reqs
from npr_engine.hooks import Hook, Kind

logger = logging.getLogger("npr_engine")

BACKEND_NAME = "npr_triton"
GRAPH = "graph"  # _npr_plan's tag for a CUDA-graph step's plan (capture and replay)
_INIT_NEW = "sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new"
_LOAD_BATCH = "sglang.srt.model_executor.runner.eager_runner.EagerRunner.load_batch"
_REPLAY_VIEW = "sglang.srt.model_executor.runner.decode_cuda_graph_runner.build_replay_fb_view"


@dataclass
class RoutedCounts:
    """Decode work this process's `npr_triton` backend sent to shared_prefix_decode."""

    steps: int = 0  # eager decode steps planned onto the shared-prefix kernel
    graph_steps: int = 0  # CUDA-graph replays whose plan held a sibling group
    graph_replays: int = 0  # decode steps replayed from a CUDA graph (any backend)
    layer_calls: int = 0  # attention calls the kernel computed (steps x plain layers)
    max_group_size: int = 0  # most sibling rows one group held


ROUTED = RoutedCounts()


def tag_sibling_rows(forward_batch, cls, batch, *args, **kwargs):
    """AFTER ForwardBatch.init_new: `forward_batch.npr_rows` for decode batches."""
    rows = None
    # Only the npr_triton backend reads them: none built in this process, nothing to do.
    if backend_class.cache_info().currsize and forward_batch.forward_mode.is_decode():
        found = rows_from_reqs(batch.reqs)
        rows = found if any(r.key is not None for r in found) else None
    forward_batch.npr_rows = rows
    return forward_batch


def carry_rows_into_replay(view, *args, **kwargs):
    """AFTER build_replay_fb_view: the replay view (padded buffers + the real batch's
    per-step fields) keeps the real batch's `npr_rows`; padding rows have none."""
    forward_batch = kwargs.get("forward_batch", args[0] if args else None)
    view.npr_rows = getattr(forward_batch, "npr_rows", None)
    ROUTED.graph_replays += 1
    return view


def carry_sibling_rows(loaded, runner, forward_batch, *args, **kwargs):
    """AFTER EagerRunner.load_batch: the eager copy keeps the batch's `npr_rows`."""
    loaded.npr_rows = getattr(forward_batch, "npr_rows", None)
    return loaded


def register_backend() -> None:
    """Adds `npr_triton` to SGLang's CLI choices and backend registry (idempotent)."""
    from sglang.srt.arg_groups.choices import (
        ATTENTION_BACKEND_CHOICES,
        add_attention_backend_choices,
    )
    from sglang.srt.layers.attention.attention_registry import (
        ATTENTION_BACKENDS,
        register_attention_backend,
    )

    if BACKEND_NAME not in ATTENTION_BACKEND_CHOICES:
        add_attention_backend_choices([BACKEND_NAME])
    if BACKEND_NAME not in ATTENTION_BACKENDS:
        register_attention_backend(BACKEND_NAME)(create_backend)


def create_backend(runner):
    """SGLang's factory signature: `fn(model_runner) -> AttentionBackend`."""
    if runner.model_config.is_encoder_decoder or runner.use_mla_backend:
        raise ValueError(f"--attention-backend {BACKEND_NAME} serves decoder-only MHA/GQA models")
    return backend_class()(runner)


@functools.cache
def backend_class() -> type:
    """The backend class, built on first use (imports SGLang's Triton backend)."""
    import torch
    from npr_engine.kernels import shared_prefix_decode
    from npr_engine.kernels.decode_paged import query_tile
    from npr_engine.kernels.tuning import graph_splits, tile_config, wave_slots
    from sglang.srt.environ import envs
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend
    from sglang.srt.mem_cache.memory_pool import KVWriteLoc
    from sglang.srt.model_executor.runner_utils.capture_mode import get_is_capture_mode

    from npr_engine.attn_routing import GraphRouting, plan_decode

    class NprTritonAttnBackend(TritonAttnBackend):
        """TritonAttnBackend + shared-prefix decode for eager steps with sibling groups."""

        _npr_plan: tuple[object, object] | None = None  # (the ForwardBatch, its meta)

        def init_forward_metadata(self, forward_batch):
            super().init_forward_metadata(forward_batch)
            self._npr_plan = None
            rows = getattr(forward_batch, "npr_rows", None)
            if (rows is None or forward_batch.spec_info is not None or get_is_capture_mode()
                    or forward_batch.seq_lens_cpu is None or self.dcp_size > 1):
                return
            bs = forward_batch.batch_size
            # NOTE: host lengths from seq_lens_cpu (no device sync); kv_indptr is their cumsum.
            lens = forward_batch.seq_lens_cpu[:bs].tolist()
            indptr = [0]
            for n in lens:
                indptr.append(indptr[-1] + int(n))
            # NOTE: SGLang 0.5.23 fills decode kv_indices as int64; the kernel takes int32 slots.
            slots = self.forward_metadata.kv_indices[: indptr[-1]].to(torch.int32)
            meta = plan_decode(indptr, slots, rows)
            if meta is not None:
                self._npr_plan = (forward_batch, meta)
                ROUTED.steps += 1
                ROUTED.max_group_size = max(ROUTED.max_group_size, int(meta.max_group_size))

        _npr_graphs: GraphRouting | None = None

        def init_cuda_graph_state(self, max_bs, max_num_tokens, *args, **kwargs):
            super().init_cuda_graph_state(max_bs, max_num_tokens, *args, **kwargs)
            if envs.SGLANG_ENABLE_METADATA_GLUE_GRAPH.get() or self.dcp_size > 1:
                # A glue graph would freeze our host-built plan at its capture values.
                logger.warning("npr_triton: CUDA-graph decode steps keep the Triton kernels "
                               "(metadata glue graph or decode context parallelism on)")
                return
            self._npr_graphs = GraphRouting(max_bs, self.cuda_graph_kv_indices.numel(), self.device,
                                            self._npr_graph_splits)

        def _npr_graph_splits(self, bs: int) -> tuple[int, int]:
            heads, kv_heads = self.num_head, self.num_kv_head
            block_w, heads_pad = query_tile(heads, kv_heads, min(16, max(bs, 1)))
            cfg = tile_config(block_w * heads_pad, self.v_head_dim)
            return graph_splits(bs, wave_slots(kv_heads, cfg, self.device))

        def init_forward_metadata_out_graph(self, forward_batch, in_capture: bool = False):
            super().init_forward_metadata_out_graph(forward_batch, in_capture)
            self._npr_plan = None
            routing = self._npr_graphs
            if (routing is None or not forward_batch.forward_mode.is_decode() or forward_batch.spec_info is not None
                    or forward_batch.seq_lens_cpu is None):
                return  # graph steps keep the Triton kernels they captured
            bs = forward_batch.batch_size
            # NOTE: host lengths (the runner's pinned seq_lens_cpu buffer): no device sync.
            lens = forward_batch.seq_lens_cpu[:bs].tolist()
            rows = None if in_capture else getattr(forward_batch, "npr_rows", None)
            meta, routed = routing.fill(bs, lens, self.forward_metadata.kv_indices, rows)
            self._npr_plan = (GRAPH, meta)
            if routed:
                ROUTED.graph_steps += 1
                ROUTED.max_group_size = max(ROUTED.max_group_size, int(meta.max_group_size))

        def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
            plan = self._npr_plan
            if plan is None or plan[0] not in (forward_batch, GRAPH) or not _plain_layer(layer, kwargs):
                return super().forward_decode(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)
            if save_kv_cache:
                loc = KVWriteLoc.for_batch(forward_batch, swa_loc=self.forward_metadata.swa_out_cache_loc)
                self._set_kv_buffer(forward_batch, layer, loc, k, v, layer.k_scale, layer.v_scale)
            ROUTED.layer_calls += 1
            # q, out: [B, Hq, D]; caches: [num_slots, Hkv, D]
            q3 = q.reshape(-1, layer.tp_q_head_num, layer.qk_head_dim)
            pool = self.token_to_kv_pool
            out = shared_prefix_decode(q3, pool.get_key_buffer(layer.layer_id),
                                       pool.get_value_buffer(layer.layer_id), plan[1], layer.scaling)
            return out.reshape(-1, layer.tp_q_head_num * layer.v_head_dim)

    return NprTritonAttnBackend


def _plain_layer(layer, kwargs: dict) -> bool:
    """Layers the shared-prefix kernel computes exactly as Triton would."""
    window = layer.sliding_window_size
    return (
        (window is None or window <= -1)
        and layer.qk_head_dim == layer.v_head_dim
        and not layer.logit_cap
        and layer.k_scale is None
        and all(kwargs.get(name) is None for name in ("sinks", "score_mod", "aux_tensors"))
    )


register_backend()

HOOKS = [
    Hook(_INIT_NEW, Kind.AFTER, tag_sibling_rows),
    Hook(_LOAD_BATCH, Kind.AFTER, carry_sibling_rows),
    Hook(_REPLAY_VIEW, Kind.AFTER, carry_rows_into_replay),
]
