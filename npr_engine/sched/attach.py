"""NPR state for a root request the controller sees for the first time."""

from __future__ import annotations

from npr_engine.core.options import NprOptions
from npr_engine.core.trace import RequestTrace
from npr_engine.grammar import TagParser
from npr_engine.sched.rebuild import note_causal
from npr_engine.sched.state import Seq, Unit


def attach_root(ctl, req) -> Seq | None:
    """The request's root sequence, or None where it is untracked (no tokenizer,
    `parallel: false`, or bad options: those abort the request with a 400)."""
    if ctl.tokenizer is None:
        return None
    custom = req.sampling_params.custom_params
    try:
        options = ctl.default_options if custom is None else NprOptions.from_custom_params(custom)
        if not options.enabled:
            return None
        schema = options.tag_schema
    except (ValueError, OSError) as exc:  # InvalidNprOptions; a schema file gone or bad since
        from sglang.srt.managers.schedule_batch import FINISH_ABORT

        req.to_finish = FINISH_ABORT(str(exc), 400, "BadRequestError")
        return None
    unit = Unit(root=None, trace=RequestTrace(schema=schema.name))
    seq = Seq(req, unit, options, schema, TagParser.fresh(schema, "root"), ctl.decoder_for(req))
    note_causal(seq, 0)
    unit.root = seq
    if options.force:
        seq.forced.extend(ctl.tokens(schema.forced_text(options.paths)))
    return seq
