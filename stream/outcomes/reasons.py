"""Dead-letter reason codes: small, fixed, usable as metric labels and record headers.

One table for every module that rejects a record (decode, features, routing,
scoring), so a code means the same thing on the dead-letter topic, in
``stream score --dead-letters`` and in the metrics.
"""

from __future__ import annotations

OK = 0
OVERSIZE = 1
MALFORMED_JSON = 2
NOT_OBJECT = 3
INVALID_TENANT = 4
MISSING_FEATURE = 5
NON_NUMERIC_FEATURE = 6
NON_FINITE_FEATURE = 7
NO_MODEL = 8
MODEL_ERROR = 9
EMPTY = 10
# Above the feature codes on purpose: codes merge by max, and ``fill`` must not hide it.
BAD_TIMESTAMP = 11
#: Not a dead letter: a record ``--where`` leaves out (not an event to score). Counted and
#: committed, never produced anywhere; hence not in REASONS.
FILTERED = 12
#: Scored, but its alert could not be written in the --alert-format (a value no typed
#: field of ECS or OCSF can hold slipped past them, say): the event is dead-lettered.
FORMAT_ERROR = 13
#: A record that should be goflow2's protobuf (--input-schema goflow2-pb) and is not.
MALFORMED_PROTOBUF = 14
#: A record on the feedback topic that is no verdict (``stream feedback``).
MALFORMED_FEEDBACK = 15
#: A record on the suppression topic that is no rule (``stream suppress``).
MALFORMED_RULE = 16

REASONS: dict[int, str] = {
    OVERSIZE: "oversize",
    MALFORMED_JSON: "malformed_json",
    NOT_OBJECT: "not_object",
    INVALID_TENANT: "invalid_tenant",
    MISSING_FEATURE: "missing_feature",
    NON_NUMERIC_FEATURE: "non_numeric_feature",
    NON_FINITE_FEATURE: "non_finite_feature",
    NO_MODEL: "no_model",
    MODEL_ERROR: "model_error",
    EMPTY: "empty_message",
    BAD_TIMESTAMP: "bad_timestamp",
    FORMAT_ERROR: "format_error",
    MALFORMED_PROTOBUF: "malformed_protobuf",
    MALFORMED_FEEDBACK: "malformed_feedback",
    MALFORMED_RULE: "malformed_rule",
}
