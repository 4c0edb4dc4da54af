"""Tensor parallelism: every rank must take the same fork/join decisions."""

from __future__ import annotations

import logging

logger = logging.getLogger("npr_engine")


def sync_sampled_ids_across_tp() -> None:
    """Every tensor-parallel rank runs this controller on its own copy of the batch, and
    every fork, join and injected token follows from the sampled ids: they must be the
    same on every rank. SGLang 0.5.23 all-reduces them only with SYNC_TOKEN_IDS_ACROSS_TP
    (read into a module global at import) or grammars; the global is read at each step."""
    from sglang.srt.layers import sampler

    if not sampler.SYNC_TOKEN_IDS_ACROSS_TP:
        logger.info("NPR Engine: sampled token ids synchronised across tensor-parallel ranks")
        sampler.SYNC_TOKEN_IDS_ACROSS_TP = True
