"""Hooks: `sglang.srt.parser.reasoning_parser.ReasoningParser.__init__` (AFTER),
SGLang 0.5.23, and registration of the `npr` reasoning parser.

The launcher starts SGLang with `--reasoning-parser npr`. SGLang builds one
ReasoningParser per request from the parser name alone; the split depends on the
request's tag schema, so after construction we give it a detector for that schema.
"""

from __future__ import annotations

from sglang.srt.parser.reasoning_parser import ReasoningParser

from npr_engine.api.reasoning import PARSER_NAME, NprReasoningDetector, schema_for_request
from npr_engine.hooks import Hook, Kind

# Registered at import: `--reasoning-parser` choices are read from this live map.
ReasoningParser.DetectorMap.setdefault(PARSER_NAME, NprReasoningDetector)


def schema_detector(ret, parser, model_type=None, stream_reasoning=True, *args, **kwargs):
    if (model_type or "").lower() == PARSER_NAME:
        # SGLang calls it both ways: ReasoningParser(name, stream, force, request, ...).
        request = kwargs.get("request", args[1] if len(args) > 1 else None)
        parser.detector = NprReasoningDetector(schema_for_request(request), stream_reasoning=stream_reasoning)
    return ret


HOOKS = [
    Hook("sglang.srt.parser.reasoning_parser.ReasoningParser.__init__", Kind.AFTER, schema_detector),
]
