"""Live per-branch text for streaming clients (DESIGN.md section 6, `branch_deltas`).

While a block runs its parent is parked: the parent's output does not grow until the
join, so SGLang would stream nothing. The controller hands each branch's newly decoded
text here; it waits on the unit's root request until the output streamer
(patches/output_streamer.py) sends it with the root's next chunk, as customized info
under `DELTAS_KEY`.

A path's deltas are the text its own sequence writes: header, generated text, the open
tag and summary of a nested block, close tag. A nested block's paths stream as deltas of
their own (their `block` id).
"""

from __future__ import annotations

from npr_engine.sched.state import Phase, Seq, seq_of

# Key of the deltas in the scheduler's customized output info.
DELTAS_KEY = "npr_branch_deltas"
# Attribute of the root `Req` holding its unsent deltas, by (block id, path index).
_PENDING = "_npr_branch_deltas"
# Roots holding unsent deltas (by id): the output streamer looks for parked roots only
# while there are some (one scheduler per process).
_WAITING: dict[int, object] = {}


def note_branch_text(seq: Seq, text: str) -> None:
    """Queue text a branch just wrote for its root's next streamed chunk."""
    if not text or seq.block is None:
        return
    root = seq.unit.root.req
    if not root.stream:
        return  # non-streaming replies carry no deltas: nothing is kept
    pending: dict = root.__dict__.setdefault(_PENDING, {})
    _WAITING[id(root)] = root
    key = (seq.block.trace.id, seq.path.index)
    item = pending.get(key)
    if item is None:
        pending[key] = {"block": key[0], "path": key[1], "depth": seq.depth, "text": text}
    else:
        item["text"] += text  # several steps unsent (stream interval, extend steps): one item


def take_deltas(req) -> list[dict]:
    """The request's unsent deltas, now considered sent."""
    pending = req.__dict__.pop(_PENDING, None)
    if pending is not None:
        _WAITING.pop(id(req), None)
    return list(pending.values()) if pending else []


def parked_roots(reqs) -> list:
    """Streaming roots, parked while their blocks run, with deltas of branches in `reqs`.

    NOTE: a parked root is in no batch, so no stock call streams it; adding it to the
    batch's own stream_output call sends an empty chunk (no new tokens) carrying the deltas.
    """
    if not _WAITING:
        return []
    for key in [k for k, root in _WAITING.items() if root.finished()]:
        del _WAITING[key]  # its last chunk takes its deltas
    present = {id(r) for r in reqs}
    roots: dict[int, object] = {}
    for req in reqs:
        seq = seq_of(req)
        if seq is None or seq.block is None:
            continue
        root = seq.unit.root
        if (root.phase is Phase.FORKED and _PENDING in root.req.__dict__ and not root.req.finished()
                and id(root.req) not in present):
            roots.setdefault(id(root.req), root.req)
    return list(roots.values())
