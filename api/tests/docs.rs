//! Swagger UI at `/docs` works offline: the page and every file it loads
//! are compiled into the binary (none comes from another host), and it
//! reads the document the api serves at `/openapi.json` instead of serving
//! a copy of its own.

use axum::routing::get;
use axum::{Json, Router};
use chatpipe_api::viewer::{self, DOCS_PATH, OPENAPI_PATH};

/// The viewer's routes (Swagger UI among them) plus the api's document, on
/// a free port; returns the base URL.
async fn serve(with_document: bool) -> String {
    let mut app: Router = viewer::router();
    if with_document {
        app = app.route(
            OPENAPI_PATH,
            get(|| async { Json(chatpipe_api::openapi::document()) }),
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `src`/`href` values of an HTML page.
fn references(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            if let Some(end) = rest.find('"') {
                out.push(rest[..end].to_owned());
                rest = &rest[end..];
            }
        }
    }
    out
}

#[tokio::test]
async fn docs_serves_swagger_ui_and_all_its_assets_from_the_binary() {
    let base = serve(true).await;
    let http = client();

    // `/docs` (the link the viewer has) redirects to the page.
    let res = http.get(format!("{base}{DOCS_PATH}")).send().await.unwrap();
    assert!(res.status().is_redirection(), "{}", res.status());
    assert_eq!(res.headers()["location"], "/docs/");

    let res = http.get(format!("{base}/docs/")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = res.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");

    let refs = references(&html);
    for needed in [
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "swagger-initializer.js",
        "swagger-ui.css",
    ] {
        assert!(
            refs.iter().any(|r| r.ends_with(needed)),
            "{needed} not referenced: {refs:?}"
        );
    }
    for r in &refs {
        assert!(
            !r.contains("//"),
            "{r}: Swagger UI must not load anything from another host"
        );
        let path = format!("/docs/{}", r.trim_start_matches("./"));
        let res = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "{path}");
        let body = res.bytes().await.unwrap();
        assert!(!body.is_empty(), "{path} is empty");
    }
    let bundle = http
        .get(format!("{base}/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert!(bundle.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
    assert!(bundle.bytes().await.unwrap().len() > 100_000);
}

#[tokio::test]
async fn swagger_reads_the_apis_document_and_never_the_public_validator() {
    let base = serve(true).await;
    let http = client();
    let init = http
        .get(format!("{base}/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(init.status().as_u16(), 200);
    let init = init.text().await.unwrap();
    assert!(
        init.contains(r#""url": "/openapi.json""#),
        "Swagger UI must load /openapi.json:\n{init}"
    );
    assert!(init.contains(r#""validatorUrl": "none""#), "{init}");
    assert!(
        !init.contains("{{config}}"),
        "config not filled in:\n{init}"
    );
    assert!(!init.contains("https://"), "{init}");
    // The document Swagger UI loads is there.
    let doc: serde_json::Value = http
        .get(format!("{base}{OPENAPI_PATH}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
}

#[tokio::test]
async fn swagger_ui_does_not_serve_a_second_copy_of_the_document() {
    // Without the api's own route, nothing answers /openapi.json: the one
    // document is the one `chatpipe_api::app` serves.
    let base = serve(false).await;
    let res = client()
        .get(format!("{base}{OPENAPI_PATH}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let res = client()
        .get(format!("{base}/docs/no-such-file.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
}
