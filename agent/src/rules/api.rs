//! GET /api/v1/rules and /api/v1/alerts, in Prometheus's JSON shape.
use std::sync::Arc;

use axum::{
    Router,
    extract::{RawQuery, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use super::RuleManager;

/// Routes for the rules stage; merge into the agent's router.
pub fn rules_router(manager: Arc<RuleManager>) -> Router {
    Router::new()
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/alerts", get(alerts))
        .with_state(manager)
}

fn ok(data: serde_json::Value) -> Response {
    let body = json!({"status": "success", "data": data}).to_string();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn rules(State(m): State<Arc<RuleManager>>, RawQuery(q): RawQuery) -> Response {
    let params: Vec<(String, String)> = q
        .as_deref()
        .map(|q| serde_urlencoded::from_str(q).unwrap_or_default())
        .unwrap_or_default();
    let ty = params.iter().find(|(k, _)| k == "type").map(|(_, v)| v.as_str());
    let filter = match ty {
        None | Some("") => None,
        Some("alert") => Some("alert"),
        Some("record") => Some("record"),
        Some(other) => {
            let body = json!({"status": "error", "errorType": "bad_data", "error": format!("invalid query parameter type='{other}'")}).to_string();
            return (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
        }
    };
    let m2 = m.clone();
    let data = tokio::task::spawn_blocking(move || m2.rules_api(filter))
        .await
        .unwrap_or_else(|_| json!({"groups": []}));
    ok(data)
}

async fn alerts(State(m): State<Arc<RuleManager>>) -> Response {
    let data = tokio::task::spawn_blocking(move || m.alerts_api())
        .await
        .unwrap_or_else(|_| json!({"alerts": []}));
    ok(data)
}
