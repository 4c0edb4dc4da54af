"""Host work per step (issue: rollout scale): the sampled ids are read from the device
once per step, untracked requests cost nothing, and text is decoded only where a tag
can start. Driven on the controller itself, with SGLang's batch objects stood in for
by plain ones (no engine: these are counts, not timings)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from npr_engine.grammar import BlockOpen, Fork, TagParser
from npr_engine.grammar.schemas import get_schema
from npr_engine.sched import controller as controller_mod
from npr_engine.sched.calm import new_text

_READS = {"tolist", "item", "__int__", "__index__", "__float__", "__bool__", "__getitem__", "numpy", "cpu"}


class CountingIds(torch.Tensor):
    """A tensor that counts every read of its values back to Python (a device sync on
    a GPU); writes are free."""

    reads = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in _READS:
            cls.reads += 1
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture
def ctl(tokenizer, monkeypatch):
    monkeypatch.setattr(controller_mod, "get_observability", lambda: SimpleNamespace(enable_metrics=False))
    monkeypatch.setattr(controller_mod, "get_parallel", lambda: SimpleNamespace(tp_size=1, attn_tp_rank=0))
    scheduler = SimpleNamespace(tokenizer=tokenizer,
                                future_map=SimpleNamespace(output_tokens_buf=torch.zeros(64, dtype=torch.long)))
    return controller_mod.Controller(scheduler)


def _req(row: int, npr: dict | None):
    params = SimpleNamespace(custom_params={"npr": npr} if npr is not None else None, skip_special_tokens=True,
                             max_new_tokens=200, ignore_eos=False)
    return SimpleNamespace(rid=f"r{row}", sampling_params=params, output_ids=[], origin_input_ids=[1, 2, 3],
                           kv=SimpleNamespace(req_pool_idx=row), return_logprob=False, eos_token_ids=None,
                           is_retracted=False, inflight_middle_chunks=0, stream=False, to_finish=None,
                           finished=lambda: False)


def _decode_batch(reqs) -> SimpleNamespace:
    return SimpleNamespace(reqs=reqs, return_logprob=False, chunked_req=None,
                           forward_mode=SimpleNamespace(is_decode=lambda: True, is_extend=lambda: False))


def _count_decodes(reqs) -> list:
    """The id lists the requests' decoders decode from now on (appended as they go)."""
    decodes = []
    for req in reqs:
        inner = req.npr.decoder._decode
        req.npr.decoder._decode = lambda ids, inner=inner: decodes.append(ids) or inner(ids)
    return decodes


def _step(ctl, reqs, token: int, batch=None) -> int:
    """One decode step's result processing up to the stock part (and after it, given
    the batch); returns the device reads."""
    after = batch is not None
    batch = batch or _decode_batch(reqs)
    ids = torch.full((len(reqs),), token, dtype=torch.long).as_subclass(CountingIds)
    result = SimpleNamespace(next_token_ids=ids, copy_done=None, logits_output=None)
    CountingIds.reads = 0
    ctl.before_result(batch, result)
    reads = CountingIds.reads
    for i, req in enumerate(reqs):  # what SGLang's own processing does next
        req.output_ids.append(int(result.next_token_ids[i].as_subclass(torch.Tensor)))
    if after:
        ctl.after_result(batch, result)
    return reads


def test_sampled_ids_are_read_once_per_step(ctl, tokenizer):
    token = tokenizer.encode(" the", add_special_tokens=False)[0]
    reqs = [_req(i, npr) for i, npr in enumerate(
        [{"force": True, "paths": 3}, None, {"enabled": False}, {"force": True, "paths": 2}, None, None])]
    forced = tokenizer.encode(get_schema("parallel").forced_text(3), add_special_tokens=False)
    assert len(forced) >= 2
    for _ in range(len(forced)):  # forced opens injected at every step, beside sampled tokens
        assert _step(ctl, reqs, token) == 1
    # The injected tokens did replace the sampled ones (what the one read was for).
    assert reqs[0].output_ids == forced and reqs[1].output_ids == [token] * len(forced)


def test_calm_requests_cost_no_read_and_no_decode(ctl, tokenizer):
    """Roots outside any tag: no read of ours (their committed ids are screened from the
    output SGLang appended them to), no per-request work in after_result, and a tag id
    wakes the request up."""
    token = tokenizer.encode(" the", add_special_tokens=False)[0]
    reqs = [_req(i, None) for i in range(4)]
    batch = _decode_batch(reqs)
    assert _step(ctl, reqs, token, batch) == 0  # first sight: nothing to inject, no read
    assert all(req.npr.calm for req in reqs)
    decodes = _count_decodes(reqs)
    for _ in range(3):
        assert _step(ctl, reqs, token, batch) == 0
    assert decodes == [] and ctl._busy is None and all(req.npr.calm for req in reqs)
    # "<parallel>" as text: its "<" wakes every request, which then reads the tag's
    # first pieces (its last one would fork, beyond these stand-ins).
    pieces = tokenizer.encode("<parallel>", add_special_tokens=False)
    assert len(pieces) >= 2
    for piece in pieces[:-1]:
        _step(ctl, reqs, piece, batch)
    assert decodes and all(not req.npr.calm and req.npr.parser.pending for req in reqs)


def test_untracked_requests_cost_no_read(ctl, tokenizer):
    token = tokenizer.encode(" the", add_special_tokens=False)[0]
    reqs = [_req(i, {"enabled": False}) for i in range(5)]
    for _ in range(3):
        assert _step(ctl, reqs, token) == 0
    assert all(req.npr is None and "_npr_prev_len" not in req.__dict__ for req in reqs)


REPLY = ("Let me think about 世界 and «quotes» — carefully, a < b.\n<Parallel>\n<Goal>\n<Outline>\n1: one idea\n"
         "</Outline>\n<Outline>\n2: another\n</Outline>\n</Goal>\n")


def test_text_is_decoded_only_where_a_tag_can_start(ctl, tokenizer):
    """Fed token by token through the screen, the parser fires what it fires on the
    whole text (plan items included), while plain text before the block is never
    decoded."""
    schema = get_schema("multiverse")
    ids = tokenizer.encode(REPLY, add_special_tokens=False)
    seq = ctl.attach(_req(0, {"schema": "multiverse"}))
    decodes = 0
    inner = seq.decoder._decode

    def counted(chunk):
        nonlocal decodes
        decodes += 1
        return inner(chunk)

    seq.decoder._decode = counted
    plain = len(tokenizer.encode(REPLY.split("<Parallel>")[0], add_special_tokens=False))
    screened, decodes_in_plain = [], None
    for n, token in enumerate(ids):
        if n == plain:
            decodes_in_plain = decodes
        screened += seq.parser.feed(new_text(ctl.loud, seq, [token]))
    whole = TagParser(schema, "root").feed(tokenizer.decode(ids))
    kinds = [(type(e).__name__, getattr(e, "plan_items", None)) for e in screened]
    assert kinds == [(type(e).__name__, getattr(e, "plan_items", None)) for e in whole]
    assert isinstance(screened[0], BlockOpen) and isinstance(screened[-1], Fork)
    assert screened[-1].plan_items == ("1: one idea", "2: another")
    # Plain text: only the " <" of "a < b" (and the id after it, a tag still pending) is
    # decoded, two decodes a push; inside the block the plan items are read.
    assert plain > 15 and decodes_in_plain <= 4, (plain, decodes_in_plain)
    assert decodes_in_plain < decodes < 2 * len(ids)


def test_special_token_tags_are_screened_by_id(ctl, tokenizer):
    """A tokenizer carrying the tags as special tokens (as NPR's does): the tag ids are
    loud, ordinary words are not."""
    from npr_engine.core.special import loud_ids

    tok = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tok.add_special_tokens({"additional_special_tokens": ["<guideline>", "</guideline>", "<plan>", "</plan>"]},
                           replace_extra_special_tokens=False)
    loud = loud_ids(tok, frozenset("<"))
    tag_ids = tok.convert_tokens_to_ids(["<guideline>", "</plan>"])
    words = tok.encode(" the cat sat on the mat", add_special_tokens=False)
    assert set(tag_ids) <= loud and loud.isdisjoint(words)
    assert tok.encode(" <", add_special_tokens=False)[0] in loud
    assert loud_ids(tok, frozenset("é")) is None  # not spelled as itself in byte-level BPE: no screen


def test_joined_roots_are_calm_in_their_summary(ctl, tokenizer):
    """After a join only tags matter in the summary and after it: the root costs no read
    and no decode there, and the summary's close tag wakes it (its parser sees it)."""
    schema = get_schema("parallel")
    token = tokenizer.encode(" the", add_special_tokens=False)[0]
    reqs = [_req(i, None) for i in range(3)]
    batch = _decode_batch(reqs)
    _step(ctl, reqs, token, batch)
    for req in reqs:  # as a fork and a join leave a root: a block in its trace, in its summary
        seq = req.npr
        assert any(isinstance(e, Fork) for e in seq.parser.feed(schema.forced_text(2)))
        seq.parser.on_join()
        seq.unit.trace.new_block(parent_block=None, parent_path=None, depth=1, fork_offset=0, width=2,
                                 fallback=None, separator=0)
        seq.unit.joined, seq.calm = True, False
    ctl.rows.rows = None  # the batch the joined roots come back in
    _step(ctl, reqs, token, batch)
    assert all(req.npr.calm for req in reqs)
    decodes = _count_decodes(reqs)
    for _ in range(3):
        assert _step(ctl, reqs, token, batch) == 0
    assert decodes == [] and ctl._busy is None
    for piece in tokenizer.encode(schema.join_close, add_special_tokens=False):
        _step(ctl, reqs, piece, batch)
    assert decodes and all(req.npr.parser.state.value == "after_summary" for req in reqs)
