"""The incremental decoder releases exactly the whole sequence's text, however the ids
are pushed, with and without the concatenation fast path (core/detok.py)."""

from __future__ import annotations

import copy
import random

import pytest

from npr_engine.core.detok import IncrementalDecoder, RememberedTexts, concatenative

TAGS = ["<guideline>", "</guideline>", "<plan>", "</plan>", "<step>", "</step>", "<takeaway>", "</takeaway>"]
TEXT = ("Let me think: 世界 «quotes» — naïve café, emoji 🙂🧪 and a < b.\n<parallel>\n<path>1: x</path>"
        "<guideline><plan>1: a</plan><step>1: 中文 step</step><takeaway>done ✓</takeaway></guideline>")


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    tok.add_special_tokens({"additional_special_tokens": TAGS}, replace_extra_special_tokens=False)
    return tok


def _sequences(tokenizer, n: int, rng: random.Random):
    """Real text, random slices of it, and random ids (broken multi-byte characters)."""
    base = tokenizer.encode(TEXT, add_special_tokens=False)
    special = tokenizer.convert_tokens_to_ids(TAGS)
    multibyte = tokenizer.encode("世界🙂🧪«»—ï✓", add_special_tokens=False)
    for k in range(n):
        if k % 3 == 0:
            yield base
        elif k % 3 == 1:
            start = rng.randrange(len(base))
            yield base[start:start + rng.randrange(1, 40)]
        else:
            pool = multibyte + special + base
            yield [rng.choice(pool) if rng.random() < 0.8 else rng.randrange(len(tokenizer)) for _ in range(30)]


@pytest.mark.parametrize("fast", [False, True])
def test_pushed_text_is_the_whole_text(tokenizer, fast):
    rng = random.Random(7)
    decode = RememberedTexts(lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False))
    assert concatenative(tokenizer)
    mismatches = []
    special = frozenset(tokenizer.convert_tokens_to_ids(TAGS)) if fast else frozenset()
    for ids in _sequences(tokenizer, 150, rng):
        decoder = IncrementalDecoder(decode, concatenative=fast, whole_ids=special)
        out, i = [], 0
        while i < len(ids):
            n = rng.choice([1, 1, 1, 2, 3, 6])
            before = tokenizer.decode(ids[:i + n], skip_special_tokens=False)
            if rng.random() < 0.1 and decoder.settled and not before.endswith("\ufffd"):
                # Ids nobody reads (as the calm screen skips them): the rest is compared after.
                decoder.skip(ids[i:i + n])
                out = [before]
            else:
                out.append(decoder.push(ids[i:i + n]))
            i += n
        out.append(decoder.flush())
        if "".join(out) != tokenizer.decode(ids, skip_special_tokens=False):
            mismatches.append(ids)
    assert not mismatches, mismatches[:3]


def test_fast_path_skips_the_window_decode(tokenizer):
    calls = []
    decoder = IncrementalDecoder(lambda ids: calls.append(list(ids)) or tokenizer.decode(list(ids)), True)
    ids = tokenizer.encode("plain words then <plan>", add_special_tokens=False)
    for token in ids:
        decoder.push([token])
    assert calls == [[t] for t in ids]  # each id decoded alone, never with its window


def test_cleanup_of_spaces_is_not_concatenative(tokenizer):
    tok = copy.copy(tokenizer)
    tok.clean_up_tokenization_spaces = True
    assert not concatenative(tok)
    assert not concatenative(object())


def test_skipped_ids_may_end_inside_a_character(tokenizer):
    """Ids skipped unread may stop inside a character: the next push decodes with its
    window, as without the fast path."""
    decode = RememberedTexts(lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False))
    ids = tokenizer.encode("ok 🧪<plan>", add_special_tokens=False)
    cut = next(i for i in range(1, len(ids)) if tokenizer.decode(ids[:i]).endswith("\ufffd"))
    texts = []
    for fast in (False, True):
        decoder = IncrementalDecoder(decode, fast)
        decoder.skip(ids[:cut])
        texts.append(decoder.push(ids[cut:]))  # the character's end, then whole ones
    assert texts[0] == texts[1] and texts[1].endswith("<plan>") and "\ufffd" not in texts[1]


def test_a_tag_token_after_skipped_ids_decodes_alone(tokenizer):
    """After ids nobody read (ending inside a character, say), a special-token tag is
    its own text, decoded without a window; what follows reads as the whole text."""
    calls = []
    decode = lambda ids: calls.append(list(ids)) or tokenizer.decode(list(ids), skip_special_tokens=False)  # noqa: E731
    special = frozenset(tokenizer.convert_tokens_to_ids(TAGS))
    emoji = tokenizer.encode("🙂", add_special_tokens=False)
    assert len(emoji) > 1  # its first id alone ends inside the character
    words = tokenizer.encode(" then more words", add_special_tokens=False)
    for skipped in (tokenizer.encode("ab", add_special_tokens=False), emoji[:1], emoji):
        tag = tokenizer.convert_tokens_to_ids("<plan>")
        ids = skipped + [tag] + words
        decoder = IncrementalDecoder(decode, True, special)
        decoder.skip(skipped)
        calls.clear()
        assert decoder.push([tag]) == "<plan>" and calls == [[tag]]
        out = "".join(decoder.push([t]) for t in words) + decoder.flush()
        whole = tokenizer.decode(ids, skip_special_tokens=False)
        assert tokenizer.decode(skipped, skip_special_tokens=False) + "<plan>" + out == whole
