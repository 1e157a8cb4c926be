//! The OpenAPI 3.1 document, generated from the handlers' annotations and
//! the response types by utoipa, served at `/openapi.json`. It declares the
//! `bearerAuth` security scheme (HTTP bearer, JWT) and puts `security` on
//! every endpoint that needs a token when authentication is on.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::agents::Agent;
use crate::auth::Role;
use crate::error::ErrorBody;
use crate::model::{
    Author, AuthorKind, ChannelInfo, ChannelList, Contact, ContactDetail, ContactPage, ContactRef,
    ConversationDetail, ConversationPage, ConversationStatus, ConversationSummary, Delivery,
    DeliveryDetail, DeliveryEvent, DeliveryPage, DeliveryState, DeliveryStatus, Direction,
    FeedMessage, FeedPage, Message, MessagePage, RejectedEvent, RejectedPage, SendMessage,
    SendStatus, SentMessage,
};
use crate::routes;
use crate::routes::agents::{AgentPage, CreateAgent, UpdateAgent};
use crate::routes::auth::{RefreshRequest, TokenRequest, TokenResponse};

/// Adds the `bearerAuth` security scheme.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An access token from POST /auth/token (HS256), or a token of the \
configured OIDC issuer (RS256/ES256). Scopes: conversations:read, messages:send, admin. \
Required only when the api runs with authentication on.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The api's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "chatpipe api",
        description = "Query API of chatpipe: conversations with their INBOUND \
messages and OUTBOUND replies, keyset-paginated listings, and the events the processor \
rejected; the messenger channels: contacts, agents' answers (queued for delivery through \
the conversation's channel in the same transaction) and deliveries with their timelines \
and retries. Timestamps are RFC 3339 in UTC (`Z`). Errors are `{\"error\": ..., \"field\": ...}`. \
With authentication on, data endpoints need `Authorization: Bearer <token>` (401 without, \
403 without the scope); sign in with POST /auth/token.",
        license(name = "Apache-2.0")
    ),
    paths(
        routes::conversations::get_conversation,
        routes::conversations::list_conversations,
        routes::conversations::list_messages,
        routes::rejected::list_rejected,
        routes::messages::send_message,
        routes::messages::list_feed,
        routes::contacts::list_contacts,
        routes::contacts::get_contact,
        routes::channels::list_channels,
        routes::deliveries::list_deliveries,
        routes::deliveries::get_delivery,
        routes::deliveries::retry_delivery,
        routes::auth::token,
        routes::auth::refresh,
        routes::agents::create_agent,
        routes::agents::list_agents,
        routes::agents::get_me,
        routes::agents::get_agent,
        routes::agents::update_agent,
        routes::agents::delete_agent,
    ),
    modifiers(&BearerAuth),
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
        Agent,
        AgentPage,
        CreateAgent,
        UpdateAgent,
        Role,
        TokenRequest,
        TokenResponse,
        RefreshRequest,
        Author,
        AuthorKind,
        DeliveryState,
        DeliveryStatus,
        ContactRef,
        SendMessage,
        SendStatus,
        SentMessage,
        FeedMessage,
        FeedPage,
        Contact,
        ContactPage,
        ContactDetail,
        ChannelInfo,
        ChannelList,
        Delivery,
        DeliveryPage,
        DeliveryEvent,
        DeliveryDetail,
    )),
    tags(
        (name = "conversations", description = "Conversations and their messages"),
        (name = "rejected events", description = "What became of events the processor could not apply"),
        (name = "authentication", description = "Sign in and refresh tokens (served when the api has a JWT secret)"),
        (name = "agents", description = "The people who read and answer conversations"),
        (name = "messages", description = "Agents' answers and every message, newest first"),
        (name = "contacts", description = "People who write through a messenger channel"),
        (name = "channels", description = "The declared messenger channels"),
        (name = "deliveries", description = "The outbox: each OUTBOUND message of a channel conversation, its timeline, and retries of dead letters"),
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

    #[test]
    fn channel_routes_and_types_are_documented() {
        let doc = serde_json::to_value(document()).unwrap();
        let paths = &doc["paths"];
        for (path, method, scope) in [
            ("/conversations/{id}/messages", "post", "messages:send"),
            ("/messages", "get", "conversations:read"),
            ("/contacts", "get", "conversations:read"),
            ("/contacts/{id}", "get", "conversations:read"),
            ("/channels", "get", "conversations:read"),
            ("/deliveries", "get", "conversations:read"),
            ("/deliveries/{id}", "get", "conversations:read"),
            ("/deliveries/{id}/retry", "post", "messages:send"),
        ] {
            let op = &paths[path][method];
            assert!(op.is_object(), "missing {method} {path}");
            assert_eq!(op["security"][0]["bearerAuth"][0], scope, "{method} {path}");
        }
        let send = &paths["/conversations/{id}/messages"]["post"];
        for status in ["202", "400", "404", "409", "422"] {
            assert!(send["responses"].get(status).is_some(), "send {status}");
        }
        assert!(send["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"));
        let schemas = &doc["components"]["schemas"];
        let message = &schemas["Message"]["properties"];
        for f in ["channel", "author", "kind", "media_id", "delivery"] {
            assert!(message.get(f).is_some(), "Message lacks {f}");
        }
        let detail = &schemas["ConversationDetail"]["properties"];
        for f in ["channel", "contact"] {
            assert!(detail.get(f).is_some(), "ConversationDetail lacks {f}");
        }
        for s in [
            "SentMessage",
            "FeedPage",
            "ContactPage",
            "ContactDetail",
            "ChannelList",
            "DeliveryPage",
            "DeliveryDetail",
            "DeliveryStatus",
        ] {
            assert!(schemas.get(s).is_some(), "missing schema {s}");
        }
    }

    #[test]
    fn security_is_declared_on_every_protected_path() {
        let doc = serde_json::to_value(document()).unwrap();
        let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
        assert_eq!(scheme["type"], "http", "{scheme}");
        assert_eq!(scheme["scheme"], "bearer");
        assert_eq!(scheme["bearerFormat"], "JWT");
        let paths = doc["paths"].as_object().unwrap();
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                let security = op.get("security");
                let public = path.starts_with("/auth/");
                assert_eq!(security.is_none(), public, "{method} {path}: {security:?}");
                if let Some(sec) = security {
                    assert!(sec.to_string().contains("bearerAuth"), "{method} {path}");
                }
            }
        }
        assert_eq!(
            doc["paths"]["/conversations/"]["get"]["security"][0]["bearerAuth"][0],
            "conversations:read"
        );
        assert_eq!(
            doc["paths"]["/agents"]["post"]["security"][0]["bearerAuth"][0],
            "admin"
        );
        for p in [
            "/auth/token",
            "/auth/token/refresh",
            "/agents",
            "/agents/me",
            "/agents/{id}",
        ] {
            assert!(paths.contains_key(p), "missing {p}");
        }
        for s in [
            "Agent",
            "AgentPage",
            "TokenResponse",
            "TokenRequest",
            "CreateAgent",
        ] {
            assert!(
                doc["components"]["schemas"].get(s).is_some(),
                "missing schema {s}"
            );
        }
        let token = &doc["components"]["schemas"]["TokenResponse"]["properties"];
        for f in ["access_token", "refresh_token", "token_type", "expires_in"] {
            assert!(token.get(f).is_some(), "missing {f}");
        }
        // The agent schema never exposes a password or its hash.
        let agent = doc["components"]["schemas"]["Agent"].to_string();
        assert!(!agent.contains("password"), "{agent}");
    }
}
