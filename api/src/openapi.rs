//! The OpenAPI 3.1 document, generated from the handlers' annotations and
//! the response types by utoipa, served at `/openapi.json`.

use utoipa::OpenApi;

use crate::error::ErrorBody;
use crate::model::{
    ConversationDetail, ConversationPage, ConversationStatus, ConversationSummary, Direction,
    Message, MessagePage, RejectedEvent, RejectedPage,
};
use crate::routes;

/// The api's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "chatpipe api",
        description = "Read-only query API of chatpipe: conversations with their INBOUND \
messages and OUTBOUND replies, keyset-paginated listings, and the events the processor \
rejected. Timestamps are RFC 3339 in UTC (`Z`). Errors are `{\"error\": ..., \"field\": ...}`.",
        license(name = "Apache-2.0")
    ),
    paths(
        routes::conversations::get_conversation,
        routes::conversations::list_conversations,
        routes::conversations::list_messages,
        routes::rejected::list_rejected,
    ),
    components(schemas(
        ConversationDetail,
        ConversationSummary,
        ConversationPage,
        Message,
        MessagePage,
        Direction,
        ConversationStatus,
        RejectedEvent,
        RejectedPage,
        ErrorBody,
    )),
    tags(
        (name = "conversations", description = "Conversations and their messages"),
        (name = "rejected events", description = "What became of events the processor could not apply"),
    )
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_openapi_3_1_with_every_path() {
        let doc = serde_json::to_value(document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        for p in [
            "/conversations/{id}/",
            "/conversations/",
            "/conversations/{id}/messages",
            "/rejected-events",
        ] {
            assert!(doc["paths"].get(p).is_some(), "missing {p}");
        }
        let detail = &doc["components"]["schemas"]["ConversationDetail"]["properties"];
        for f in ["id", "status", "created_at", "updated_at", "messages"] {
            assert!(detail.get(f).is_some(), "missing {f}");
        }
        assert!(doc["components"]["schemas"]["Message"]["properties"]
            .get("type")
            .is_some());
    }
}
