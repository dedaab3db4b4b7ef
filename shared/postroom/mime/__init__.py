"""MIME analysis for IMAP: parse once at delivery, serve FETCH by slicing the raw bytes."""

from postroom.mime.analyze import (
    SEARCH_FIELDS,
    Structure,
    analyze,
    analyze_structure,
    base_subject,
    reply_subject,
    subject_base,
)
from postroom.mime.model import (
    Address,
    Envelope,
    HeaderField,
    Limits,
    MessageMeta,
    Part,
)
from postroom.mime.sections import filter_header_fields, find_part, section_range
from postroom.mime.stored import jsonb_safe, metadata_dict, metadata_json
from postroom.mime.wire import nstring, render_bodystructure, render_envelope, string

__all__ = [
    "SEARCH_FIELDS",
    "Address",
    "Envelope",
    "HeaderField",
    "Limits",
    "MessageMeta",
    "Part",
    "Structure",
    "analyze",
    "analyze_structure",
    "base_subject",
    "filter_header_fields",
    "find_part",
    "jsonb_safe",
    "metadata_dict",
    "metadata_json",
    "nstring",
    "render_bodystructure",
    "render_envelope",
    "reply_subject",
    "section_range",
    "string",
    "subject_base",
]
