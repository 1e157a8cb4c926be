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
