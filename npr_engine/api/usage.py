"""`usage.reasoning_tokens` of chat replies split by our `npr` reasoning parser.

SGLang 0.5.23 counts reasoning tokens in the scheduler, against the reasoning parser's
think-start / think-end token ids (Req.update_reasoning_tokens); a tag structure split
over the flattened text (DESIGN.md section 6) is not that, so it reported 0 beside a
non-empty `reasoning_content`. We count the output tokens that went to
`reasoning_content` from the token ids instead, in the HTTP process where the request's
`separate_reasoning` and schema are known (patches/openai_response.py for replies,
patches/tokenizer_meta.py for streams).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from npr_engine.api.reasoning import PARSER_NAME, schema_for_request
from npr_engine.core.detok import IncrementalDecoder
from npr_engine.grammar import ReasoningSplitter, TagSchema


def count_reasoning_tokens(output_ids: Sequence[int], decode: Callable[[Sequence[int]], str],
                           schema: TagSchema) -> int:
    """Output tokens whose text starts in the reasoning split.

    Why token ids and not re-tokenizing `reasoning_content`: a path's text re-encoded
    need not give back the ids the model sampled, and paths decoded apart join into one
    string whose encoding crosses their boundaries. Here each token's text is what an
    incremental decoder releases for it (a token that releases nothing yet, part of a
    multi-byte character, goes with the text after it), the split is our reasoning
    parser's over that same text, and a token counts where its first character went.
    For the `parallel` schema every tag the engine injects (a forced block open, path
    headers, the join header) is encoded on its own, so with forced blocks every split
    point is a token boundary and the count is exact; only a token the model samples
    across a tag it writes itself (` <` before `parallel>`) is placed by its first
    character.
    """
    if not output_ids or schema.block_open not in decode(output_ids):
        return 0  # no block, no reasoning (the split starts every reply as content)
    decoder = IncrementalDecoder(decode)
    pieces = [decoder.push([token]) for token in output_ids]
    pieces[-1] += decoder.flush()
    splitter = ReasoningSplitter(schema)
    runs = splitter.feed_pieces("".join(pieces)) + splitter.finish_pieces()
    in_reasoning = "".join(("1" if reasoning else "0") * len(text) for text, reasoning in runs)
    count, offset = 0, 0
    for piece in pieces:
        if offset < len(in_reasoning) and in_reasoning[offset] == "1":
            count += 1
        offset += len(piece)
    return count


def reply_reasoning_tokens(serving, request, output_ids: Sequence[int]) -> int | None:
    """One chat choice's reasoning tokens; None where the count is not ours (another
    reasoning parser, or a request that is not a chat completion)."""
    if getattr(serving, "reasoning_parser", None) != PARSER_NAME or not hasattr(request, "separate_reasoning"):
        return None
    if not request.separate_reasoning:
        return 0  # everything stayed in `content`
    tokenizer = serving.tokenizer_manager.tokenizer
    # NOTE: special tokens decoded as text: each then has a place (an EOS after the
    # summary is content), and tags that are special tokens stay visible, as in replies.
    return count_reasoning_tokens(
        list(output_ids), lambda ids: tokenizer.decode(ids, skip_special_tokens=False), schema_for_request(request)
    )
