//! The OpenAPI document: served publicly, OpenAPI 3.1, current with `docs/openapi.json`, and
//! true to the router (every documented operation is routed and answers a documented status).

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::support::TestServer;

/// `docs/openapi.json` at the workspace root.
fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_public_openapi_3_1_and_docs_openapi_json_is_current() {
    let server = TestServer::start_with(Some("k3y-openapi"), tempfile::tempdir().unwrap()).await;
    // Public, like /metrics: no key sent.
    let response = server
        .client
        .get(format!("{}/api/v1/openapi.json", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let text = response.text().await.unwrap();
    assert_eq!(text, mechanics_server::openapi::document_json());
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(
        schemes["bearer"],
        json!({ "type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <key>`" })
    );
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "X-API-Key");
    let codes = doc["components"]["schemas"]["ApiErrorBody"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .clone();
    for code in [
        "bad_request",
        "unauthorized",
        "forbidden",
        "not_found",
        "conflict",
        "payload_too_large",
        "unavailable",
    ] {
        assert!(codes.contains(&json!(code)), "{code}");
    }
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let public = [
                "/api/v1/openapi.json",
                "/api/v1/docs",
                "/metrics",
                "/healthz",
                "/webhooks/{source}",
            ]
            .contains(&path.as_str());
            let responses = op["responses"].as_object().unwrap();
            if public {
                assert_eq!(op["security"], json!([{}]), "{method} {path}");
            } else {
                assert!(
                    op["security"].as_array().is_some_and(|s| s.len() == 2),
                    "{method} {path}"
                );
                for status in ["401", "403", "503"] {
                    assert!(responses.contains_key(status), "{method} {path} {status}");
                }
            }
            for (status, answer) in responses {
                if status.as_str() >= "400" {
                    assert_eq!(
                        answer["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ApiError",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    assert!(operations >= 24, "{operations}");
    // The routes outside /api/v1 are documented too.
    for path in [
        "/metrics",
        "/healthz",
        "/debug/vars",
        "/logs",
        "/webhooks/{source}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }

    // The committed copy is the generated one (MECHANICS_UPDATE_OPENAPI=1 rewrites it).
    let committed = committed_path();
    if std::env::var_os("MECHANICS_UPDATE_OPENAPI").is_some() {
        std::fs::write(&committed, &text).unwrap();
    }
    let on_disk = std::fs::read_to_string(&committed).unwrap_or_default();
    assert!(
        on_disk == text,
        "docs/openapi.json differs from the generated document: run \
         `mechanics api openapi > docs/openapi.json` (or this test with MECHANICS_UPDATE_OPENAPI=1)"
    );

    // The reference page: public, HTML, its script embedded (nothing loaded from elsewhere).
    let response = server
        .client
        .get(format!("{}/api/v1/docs", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = response.text().await.unwrap();
    assert!(
        page.contains("<script>") && page.contains("openapi.json"),
        "{page}"
    );
    assert!(
        !page.contains("src=") && !page.contains("https://"),
        "{page}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed_and_answers_a_documented_status() {
    let server = TestServer::start_with(Some("k3y-routes"), tempfile::tempdir().unwrap()).await;
    let doc: Value = serde_json::from_str(&mechanics_server::openapi::document_json()).unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let concrete = path
                .replace("{name}", "nope")
                .replace("{source}", "nope")
                .replace("{id}", "999999");
            let body = op.get("requestBody").map(|_| json!({}));
            let (status, answer) = server.call(&method.to_uppercase(), &concrete, body).await;
            assert_ne!(status, 405, "{method} {path}: {answer}");
            assert_ne!(
                answer["error"]["message"], "no such API route",
                "{method} {path} is documented but not routed"
            );
            assert!(
                op["responses"].get(status.to_string()).is_some(),
                "{method} {path} answered {status}, which is not documented: {answer}"
            );
        }
    }
    // And a route that is not documented is not answered.
    let (status, answer) = server.call("GET", "/api/v1/undocumented", None).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_names_the_field_at_fault() {
    let server = TestServer::start_with(Some("k3y-fields"), tempfile::tempdir().unwrap()).await;
    let spec = json!({
        "name": "nightly",
        "kind": "http",
        "url": "http://127.0.0.1:9/",
        "triggers": [{ "cron": "not a schedule" }],
    });
    let (status, body) = server
        .call("POST", "/api/v1/workers", Some(json!({ "spec": spec })))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    assert_eq!(body["error"]["field"], "triggers[0].cron", "{body}");

    let (status, body) = server.call("GET", "/api/v1/tasks?limit=0", None).await;
    assert_eq!((status, &body["error"]["field"]), (400, &json!("limit")));
    let (status, body) = server.call("GET", "/api/v1/tasks?colour=red", None).await;
    assert_eq!((status, &body["error"]["field"]), (400, &json!("colour")));
    // Nothing to blame on a field: no `field` at all.
    let (status, body) = server.call("GET", "/api/v1/tasks/999999", None).await;
    assert_eq!(status, 404);
    assert!(body["error"].get("field").is_none(), "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_number_written_with_a_fraction_is_an_integer() {
    let server = TestServer::start_with(Some("k3y-numbers"), tempfile::tempdir().unwrap()).await;
    // JSON Schema's `integer` admits 3600.0, and JavaScript clients write it.
    let (status, body) = server
        .call(
            "POST",
            "/api/v1/keys",
            Some(json!({ "name": "whole", "scope": "read", "expires_in_secs": 3600.0 })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // A real fraction is still refused, with the place of the first error.
    let (status, body) = server
        .call(
            "POST",
            "/api/v1/keys",
            Some(json!({ "name": "half", "scope": "read", "expires_in_secs": 3600.5 })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("expected u64") && message.contains("column"),
        "{message}"
    );
    server.stop().await;
}
