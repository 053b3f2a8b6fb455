//! The OpenAPI 3.1 document of the API, generated from the handlers and the API types.
//!
//! One source of truth: every `/api/v1` route is registered through `utoipa-axum`'s router
//! ([`crate::api::api_routes`]), which takes a handler only with its `#[utoipa::path]`, so a route
//! cannot exist without being documented. What every operation shares is added here, after the
//! handlers' own documentation, so it cannot be forgotten on one of them:
//!
//! - the security schemes (`Authorization: Bearer` and `X-API-Key`), required by every operation
//!   under `/api/v1`;
//! - the error answers each operation can give, all with the [`ApiError`] body: `401` and `403`
//!   (a key missing, or outside its scope), `500`, `503` (overload, with `Retry-After`); `400`
//!   for an operation with parameters or a body (a path segment that does not decode, a bad
//!   query, a body that does not parse); `404` for one with a path parameter; `413` for one with
//!   a body;
//! - the stable error `code`s, listed on [`ApiErrorBody`].
//!
//! Served at `GET /api/v1/openapi.json` (public, like `/metrics`) and printed by
//! `mechanics api openapi`; the committed copy `docs/openapi.json` is compared with it by a test.

use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    Content, HttpMethod, ObjectBuilder, OpenApi, Ref, RefOr, SecurityRequirement,
};

#[cfg(doc)]
use mechanics_proto::api::{ApiError, ApiErrorBody};

/// The stable `code` of an error answer, with the status it comes with. A client may branch on
/// the code; the message is for people.
pub const ERROR_CODES: &[(&str, u16, &str)] = &[
    (
        "bad_request",
        400,
        "the request is not valid: the message says what and where",
    ),
    (
        "unauthorized",
        401,
        "no API key, or one that is unknown, revoked or expired",
    ),
    (
        "forbidden",
        403,
        "the API key's scope does not include this request",
    ),
    (
        "not_found",
        404,
        "no such route, or no such worker, source, task, event, node or key",
    ),
    (
        "method_not_allowed",
        405,
        "the route does not take this method (see `Allow`)",
    ),
    ("too_slow", 408, "the request body arrived too slowly"),
    (
        "conflict",
        409,
        "the request conflicts with the current state",
    ),
    (
        "payload_too_large",
        413,
        "the body, or the module in it, is over the limit",
    ),
    (
        "rate_limited",
        429,
        "too many requests: `Retry-After` says when to come back",
    ),
    (
        "internal",
        500,
        "the server failed; nothing was changed by the caller's mistake",
    ),
    (
        "unavailable",
        503,
        "overloaded or busy: `Retry-After` says when to come back",
    ),
];

/// The name of the Bearer scheme in the document.
pub const BEARER: &str = "bearer";
/// The name of the `X-API-Key` scheme in the document.
pub const API_KEY_HEADER: &str = "api_key";

/// The finished document: the routes' own documentation, then what every operation shares.
pub fn document() -> OpenApi {
    let routes = crate::api::public_api_routes().merge(crate::api::api_routes());
    let (_, mut doc) = utoipa_axum::router::OpenApiRouter::new()
        .nest(mechanics_proto::api::API_PREFIX, routes)
        .merge(crate::observe::open_routes())
        .merge(crate::observe::log_routes())
        .merge(crate::webhooks::routes())
        .split_for_parts();
    finish(&mut doc);
    doc
}

/// [`document`] as pretty JSON with a final newline, the form of `docs/openapi.json`.
pub fn document_json() -> String {
    let mut text = serde_json::to_string_pretty(&document())
        .unwrap_or_else(|err| panic!("the OpenAPI document serializes: {err}"));
    text.push('\n');
    text
}

fn error_response(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ApiError"))),
        )
        .into()
}

fn add_error(operation: &mut Operation, status: u16, description: &str) {
    operation
        .responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| error_response(description));
}

fn finish(doc: &mut OpenApi) {
    doc.info.title = "Mechanics API".to_owned();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    // Not utoipa's own package metadata, which the router's default document carries.
    doc.info.contact = None;
    doc.info.license = Some(utoipa::openapi::License::new(env!("CARGO_PKG_LICENSE")));
    doc.info.description = Some(
        "The coordinator's HTTP API. Every error answer is `{ \"error\": { \"code\", \"message\", \
         \"field\"? } }` with a stable `code` (see the `ApiErrorBody` schema). Keys: the key of \
         `--api-key` is an admin key; `mechanics key create NAME --scope read|operate|admin` \
         makes scoped ones."
            .to_owned(),
    );
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("`Authorization: Bearer <key>`"))
                .build(),
        ),
    );
    components.add_security_scheme(
        API_KEY_HEADER,
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "X-API-Key",
            "`X-API-Key: <key>`",
        ))),
    );
    let codes: Vec<&str> = ERROR_CODES.iter().map(|(code, _, _)| *code).collect();
    let table: Vec<String> = ERROR_CODES
        .iter()
        .map(|(code, status, why)| format!("`{code}` ({status}): {why}"))
        .collect();
    components.schemas.insert(
        "ApiErrorBody".to_owned(),
        ObjectBuilder::new()
            .description(Some("The body of an error answer."))
            .property(
                "code",
                ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some(codes))
                    .description(Some(format!(
                        "A stable, machine-readable code: {}",
                        table.join("; ")
                    ))),
            )
            .required("code")
            .property(
                "message",
                ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some("What went wrong and what to do, for people.")),
            )
            .required("message")
            .property(
                "field",
                ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some("The input field that is wrong, when one is.")),
            )
            .into(),
    );
    let security = [
        SecurityRequirement::new(BEARER, Vec::<String>::new()),
        SecurityRequirement::new(API_KEY_HEADER, Vec::<String>::new()),
    ];
    for item in doc.paths.paths.values_mut() {
        for method in [
            HttpMethod::Get,
            HttpMethod::Post,
            HttpMethod::Put,
            HttpMethod::Delete,
            HttpMethod::Patch,
        ] {
            let Some(operation) = operation_mut(item, method) else {
                continue;
            };
            if operation.security.is_none() {
                operation.security = Some(security.to_vec());
            }
            let public = operation
                .security
                .as_ref()
                .is_some_and(|s| s.iter().all(|r| *r == SecurityRequirement::default()));
            if !public {
                add_error(
                    operation,
                    401,
                    "No API key, or one unknown, revoked or expired.",
                );
                add_error(
                    operation,
                    403,
                    "The key's scope does not include this request; the message names the scope needed.",
                );
            }
            let params = operation.parameters.as_deref().unwrap_or_default();
            let has_path = params
                .iter()
                .any(|p| {
                    matches!(p, RefOr::T(p) if p.parameter_in == utoipa::openapi::path::ParameterIn::Path)
                });
            let has_body = operation.request_body.is_some();
            if !params.is_empty() || has_body {
                add_error(
                    operation,
                    400,
                    "The request is not valid; the message says why.",
                );
            }
            if has_path {
                add_error(operation, 404, "No such item.");
            }
            if has_body {
                add_error(operation, 413, "The body is larger than the limit.");
            }
            add_error(operation, 500, "The server failed.");
            add_error(
                operation,
                503,
                "Overloaded or the database is busy; `Retry-After` says when to come back.",
            );
        }
    }
}

fn operation_mut(
    item: &mut utoipa::openapi::PathItem,
    method: HttpMethod,
) -> Option<&mut Operation> {
    match method {
        HttpMethod::Get => item.get.as_mut(),
        HttpMethod::Post => item.post.as_mut(),
        HttpMethod::Put => item.put.as_mut(),
        HttpMethod::Delete => item.delete.as_mut(),
        HttpMethod::Patch => item.patch.as_mut(),
        _ => None,
    }
}
