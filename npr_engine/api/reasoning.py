"""Reasoning split for parallel blocks (DESIGN.md section 6), as an SGLang detector.

`parallel`: paths (block open through the last path close) are reasoning; summaries
and all text outside blocks are content. `npr` and `multiverse`: whole blocks are
reasoning; text outside blocks is content. The schema is the request's own
(`parallel.schema`), else the server's `--tag-schema`.
"""

from __future__ import annotations

from sglang.srt.parser.reasoning_parser import BaseReasoningFormatDetector, StreamingParseResult

from npr_engine.core.options import NprOptions
from npr_engine.grammar import ReasoningSplitter, TagSchema, split_reasoning

PARSER_NAME = "npr"


class NprReasoningDetector(BaseReasoningFormatDetector):
    def __init__(self, schema: TagSchema | None = None, stream_reasoning: bool = True, **_ignored):
        # SGLang constructs detectors without a schema; the hook then sets the request's.
        schema = schema or NprOptions().tag_schema
        # NOTE: reasoning_default None = a reply starts as content (reasoning only inside
        # blocks). SGLang's default "always" marks every chat request as reasoning, and its
        # grammar backend then defers regex/JSON constraints until the join header, which a
        # reply without blocks never writes: constraints were silently ignored.
        super().__init__(
            schema.block_open, schema.join_header, stream_reasoning=stream_reasoning, reasoning_default=None
        )
        self.schema = schema
        self._splitter = ReasoningSplitter(schema)

    def detect_and_parse(self, text: str) -> StreamingParseResult:
        reasoning, content = split_reasoning(text, self.schema)
        return StreamingParseResult(normal_text=content, reasoning_text=reasoning)

    def parse_streaming_increment(self, new_text: str) -> StreamingParseResult:
        reasoning, content = self._splitter.feed(new_text)
        return StreamingParseResult(normal_text=content, reasoning_text=reasoning)

    def finish(self) -> StreamingParseResult:
        reasoning, content = self._splitter.finish()
        return StreamingParseResult(normal_text=content, reasoning_text=reasoning)


def schema_for_request(request) -> TagSchema:
    custom = getattr(request, "custom_params", None)
    try:
        return NprOptions.from_custom_params(custom).tag_schema
    except ValueError:
        return NprOptions().tag_schema
