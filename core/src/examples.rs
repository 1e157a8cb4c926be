//! Invalid webhook payloads, each with the field its `400` names: the
//! catalogue of the contract's rejections that do not depend on the size
//! limits ([`crate::event::Limits`]). Core's unit test checks the validator
//! against it and the end-to-end conformance test checks ingest's answers,
//! so both hold one list.

use uuid::Uuid;

/// `(body, field)` pairs; `c` is used as a conversation id and `m` as a
/// message id wherever a valid one is needed.
pub fn invalid_payloads(c: Uuid, m: Uuid) -> Vec<(String, &'static str)> {
    let ts = "2025-06-04T14:20:00Z";
    vec![
        ("not json".into(), "body"),
        ("".into(), "body"),
        ("[1,2]".into(), "body"),
        ("\"NEW_MESSAGE\"".into(), "body"),
        (
            format!(r#"{{"timestamp":"{ts}","data":{{"id":"{c}"}}}}"#),
            "type",
        ),
        (
            format!(r#"{{"type":7,"timestamp":"{ts}","data":{{"id":"{c}"}}}}"#),
            "type",
        ),
        (
            format!(r#"{{"type":"NEW_THING","timestamp":"{ts}","data":{{"id":"{c}"}}}}"#),
            "type",
        ),
        (
            format!(r#"{{"type":"new_conversation","timestamp":"{ts}","data":{{"id":"{c}"}}}}"#),
            "type",
        ),
        (
            format!(r#"{{"type":"NEW_CONVERSATION","data":{{"id":"{c}"}}}}"#),
            "timestamp",
        ),
        (
            format!(
                r#"{{"type":"NEW_CONVERSATION","timestamp":1717510800,"data":{{"id":"{c}"}}}}"#
            ),
            "timestamp",
        ),
        (
            format!(
                r#"{{"type":"NEW_CONVERSATION","timestamp":"2025-06-04 14:20","data":{{"id":"{c}"}}}}"#
            ),
            "timestamp",
        ),
        (
            format!(
                r#"{{"type":"NEW_CONVERSATION","timestamp":"2025-06-04T14:20:00","data":{{"id":"{c}"}}}}"#
            ),
            "timestamp",
        ),
        (
            format!(
                r#"{{"type":"NEW_CONVERSATION","timestamp":"2025-13-04T14:20:00Z","data":{{"id":"{c}"}}}}"#
            ),
            "timestamp",
        ),
        // Valid RFC 3339, but outside years 0001–9999 in UTC: the canonical
        // (UTC) encoding would write a year no decoder reads back.
        (
            format!(
                r#"{{"type":"NEW_CONVERSATION","timestamp":"0000-01-01T00:00:00+00:01","data":{{"id":"{c}"}}}}"#
            ),
            "timestamp",
        ),
        (
            format!(
                r#"{{"type":"CLOSE_CONVERSATION","timestamp":"9999-12-31T23:59:59-00:01","data":{{"id":"{c}"}}}}"#
            ),
            "timestamp",
        ),
        (
            format!(
                r#"{{"type":"NEW_MESSAGE","timestamp":"0000-06-01T00:00:00Z","data":{{"id":"{m}","content":"x","conversation_id":"{c}"}}}}"#
            ),
            "timestamp",
        ),
        (
            format!(r#"{{"type":"NEW_CONVERSATION","timestamp":"{ts}"}}"#),
            "data",
        ),
        (
            format!(r#"{{"type":"NEW_CONVERSATION","timestamp":"{ts}","data":null}}"#),
            "data",
        ),
        (
            format!(r#"{{"type":"NEW_CONVERSATION","timestamp":"{ts}","data":"{c}"}}"#),
            "data",
        ),
        (
            format!(r#"{{"type":"NEW_CONVERSATION","timestamp":"{ts}","data":{{}}}}"#),
            "data.id",
        ),
        (
            format!(r#"{{"type":"NEW_CONVERSATION","timestamp":"{ts}","data":{{"id":42}}}}"#),
            "data.id",
        ),
        (
            format!(r#"{{"type":"NEW_CONVERSATION","timestamp":"{ts}","data":{{"id":"123"}}}}"#),
            "data.id",
        ),
        (
            format!(
                r#"{{"type":"CLOSE_CONVERSATION","timestamp":"{ts}","data":{{"id":"6a41b3478d804ce984ba7af66f369f6a"}}}}"#
            ),
            "data.id",
        ),
        (
            format!(
                r#"{{"type":"NEW_MESSAGE","timestamp":"{ts}","data":{{"content":"x","conversation_id":"{c}"}}}}"#
            ),
            "data.id",
        ),
        (
            format!(
                r#"{{"type":"NEW_MESSAGE","timestamp":"{ts}","data":{{"id":"{m}","conversation_id":"{c}"}}}}"#
            ),
            "data.content",
        ),
        (
            format!(
                r#"{{"type":"NEW_MESSAGE","timestamp":"{ts}","data":{{"id":"{m}","content":5,"conversation_id":"{c}"}}}}"#
            ),
            "data.content",
        ),
        (
            format!(
                r#"{{"type":"NEW_MESSAGE","timestamp":"{ts}","data":{{"id":"{m}","content":["a"],"conversation_id":"{c}"}}}}"#
            ),
            "data.content",
        ),
        // Postgres `text` and `jsonb` cannot store U+0000.
        (
            format!(
                r#"{{"type":"NEW_MESSAGE","timestamp":"{ts}","data":{{"id":"{m}","content":"a\u0000b","conversation_id":"{c}"}}}}"#
            ),
            "data.content",
        ),
        (
            format!(
                r#"{{"type":"NEW_MESSAGE","timestamp":"{ts}","data":{{"id":"{m}","content":"\u0000","conversation_id":"{c}"}}}}"#
            ),
            "data.content",
        ),
        (
            format!(
                r#"{{"type":"NEW_MESSAGE","timestamp":"{ts}","data":{{"id":"{m}","content":"x"}}}}"#
            ),
            "data.conversation_id",
        ),
        (
            format!(
                r#"{{"type":"NEW_MESSAGE","timestamp":"{ts}","data":{{"id":"{m}","content":"x","conversation_id":"nope"}}}}"#
            ),
            "data.conversation_id",
        ),
        (
            format!(
                r#"{{"type":"CLOSE_CONVERSATION","timestamp":"{ts}","data":{{"id":"not-a-uuid"}}}}"#
            ),
            "data.id",
        ),
    ]
}
